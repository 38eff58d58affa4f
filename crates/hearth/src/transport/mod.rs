//! Transport: how Hearth reaches other servers, below federation, media and push, with no
//! room logic. Today it holds the outbound address policy ([`policy`]) and the one HTTP
//! client that applies it, with TLS verification, time-outs and size caps, to every request
//! to a URL someone else chose ([`client`]). Server-name resolution, the signed federation
//! client and the remote signing-key cache are to be built on them (issue 16).
//!
//! Dependencies: `transport` reads `config`; `federation/`, media and push will call into
//! it; it calls none of them.

pub mod client;
pub mod policy;
