pub mod members;
pub mod reset;
pub mod status;
