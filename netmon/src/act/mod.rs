//! Stage 4: act. The in-kernel drop list: addresses and prefixes ([`net`]), its state file
//! and audit log ([`state`]), the pinned kernel maps ([`droplist`]) and the operations the
//! CLI and daemon perform on it ([`commands`]). Then what is done about alerts: the
//! automatic response ([`respond`]), the forensic event log and the dedup gate
//! ([`notify`]), and the alert sinks ([`sinks`]).

pub mod commands;
pub mod droplist;
pub mod net;
pub mod notify;
pub mod respond;
pub mod sinks;
pub mod state;
