pub mod gateway;
pub mod messages;
pub mod pg_cluster;
pub mod process;
pub mod redis_server;
pub mod upstream;

pub use gateway::Gateway;
pub use upstream::{Step, StreamScript, Upstream};
