//! End-to-end tests of the HTTP API: a real server on loopback, real HTTP, both engines.

mod common;

mod account;
mod appservice;
mod devices;
mod directory;
mod discovery;
mod e2ee;
mod ephemeral;
mod errors;
mod federation;
mod federation_rooms;
mod guests;
mod identity;
mod legacy;
mod login;
mod media;
mod openid;
mod operator;
mod outbound;
mod processes;
mod profile;
mod push;
mod push_delivery;
mod room_extras;
mod rooms;
mod search;
mod server_discovery;
mod sliding_sync;
mod spaces;
mod storage;
mod synapse_admin;
mod sync;
mod test_dns;
mod threads;
mod tls;
