//! Transport: how Hearth reaches other servers, below federation, media and push, with no
//! room logic: the outbound address policy ([`policy`]); the one HTTP client that applies
//! it, with TLS verification, time-outs and size caps, to every request to a URL someone
//! else chose ([`client`]); DNS ([`dns`]); and server discovery, from a server name to
//! where its federation API answers ([`resolve`]). The signed federation client and the
//! remote signing-key cache are to be built on them (issue 16).
//!
//! Dependencies: `transport` reads `config`; `federation/`, media and push will call into
//! it; it calls none of them.

pub mod client;
pub mod dns;
pub mod policy;
pub mod resolve;
