pub mod gateway;
pub mod messages;
pub mod process;
pub mod upstream;

pub use gateway::Gateway;
pub use upstream::{Step, StreamScript, Upstream};
