//! Phases: each command is an ordered list of phases (playbooks/<command>.yaml), each phase one
//! file implementing `Phase` (plan / apply / verify), all run by one runner.
pub mod cmd;
