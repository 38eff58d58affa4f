//! Federation as a service, above `rooms` and `users` and below `api`: what Hearth does with
//! other servers. Today: queries that answer for local users from local data and for remote
//! users by asking their server ([`query`]). The client handlers and, where the spec has
//! them, the federation handlers call the same functions. Transactions, joins, the sender
//! and backfill are to come (issue 16).

pub mod query;
