pub mod gateway;
pub mod upstream;

pub use gateway::Gateway;
pub use upstream::{Step, StreamScript, Upstream};
