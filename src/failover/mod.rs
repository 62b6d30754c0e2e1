//! Failover policy: which failures make a failover route try its next child, and how a gutter
//! pool caps expiry times (mcrouter's FailoverRoute / FailoverWithExptimeRoute, and the gutter
//! pools of "Scaling Memcache at Facebook"). Server health (TKO) lives with the backend
//! connections that observe it (`backend::health`, `backend::probe`).

pub mod gutter;
pub mod policy;
