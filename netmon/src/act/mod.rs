//! Stage 4: act. The in-kernel drop list: addresses and prefixes ([`net`]), its state file
//! and audit log ([`state`]), the pinned kernel maps ([`droplist`]) and the operations the
//! CLI and daemon perform on it ([`commands`]).

pub mod commands;
pub mod droplist;
pub mod net;
pub mod state;
