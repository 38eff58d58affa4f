//! Random identifiers: event ids of versions 1 and 2, media ids, transaction and session
//! ids, tokens. One place, so that every id comes from the thread's CSPRNG the same way.

use rand::{distributions::Alphanumeric, Rng};

/// `len` random ASCII letters and digits.
pub fn alphanumeric(len: usize) -> String {
    rand::thread_rng().sample_iter(Alphanumeric).take(len).map(char::from).collect()
}
