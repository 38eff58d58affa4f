//! Order-preserving encodings for table keys, and the value encodings.
//!
//! Keys are compared byte-wise by both engines, so every key part is encoded such that
//! byte order equals logical order: integers big-endian, strings escaped and terminated so
//! that a string sorts before any longer string it is a prefix of. A tuple key is its
//! parts concatenated, which makes "all keys whose first part is X" a byte-prefix scan.
//!
//! Services never build byte keys by hand: a table declares its key and value types once
//! (see `tables.rs`) and these traits do the rest.

use std::fmt;

/// A key or value that failed to decode: the database holds bytes this version does not
/// understand (corruption, or data written by a newer schema).
#[derive(Debug, Clone)]
pub struct CodecError(pub String);

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "undecodable stored data: {}", self.0)
    }
}

impl std::error::Error for CodecError {}

/// One part of a table key, with a borrowed form used to encode lookups without cloning.
pub trait KeyPart: Sized {
    /// What callers pass to encode a key (`&str` for `String`, the integer itself for `u64`).
    type Ref<'a>: Copy;

    /// Appends the order-preserving encoding of `value` to `out`.
    fn encode(value: Self::Ref<'_>, out: &mut Vec<u8>);

    /// Reads one part from the front of `input`, advancing it.
    fn decode(input: &mut &[u8]) -> Result<Self, CodecError>;
}

/// Escape byte: a 0x00 in the data is written 0x00 0xFF; the terminator is 0x00 0x01.
const ESC: u8 = 0x00;
const ESCAPED_ZERO: u8 = 0xFF;
const TERMINATOR: u8 = 0x01;

fn encode_bytes(bytes: &[u8], out: &mut Vec<u8>) {
    out.reserve(bytes.len() + 2);
    for &b in bytes {
        out.push(b);
        if b == ESC {
            out.push(ESCAPED_ZERO);
        }
    }
    out.push(ESC);
    out.push(TERMINATOR);
}

fn decode_bytes(input: &mut &[u8]) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < input.len() {
        let b = input[i];
        if b != ESC {
            out.push(b);
            i += 1;
            continue;
        }
        match input.get(i + 1) {
            Some(&ESCAPED_ZERO) => {
                out.push(ESC);
                i += 2;
            }
            Some(&TERMINATOR) => {
                *input = &input[i + 2..];
                return Ok(out);
            }
            _ => return Err(CodecError("bad escape in key string".into())),
        }
    }
    Err(CodecError("unterminated key string".into()))
}

impl KeyPart for String {
    type Ref<'a> = &'a str;

    fn encode(value: &str, out: &mut Vec<u8>) {
        encode_bytes(value.as_bytes(), out);
    }

    fn decode(input: &mut &[u8]) -> Result<Self, CodecError> {
        String::from_utf8(decode_bytes(input)?).map_err(|e| CodecError(e.to_string()))
    }
}

impl KeyPart for Vec<u8> {
    type Ref<'a> = &'a [u8];

    fn encode(value: &[u8], out: &mut Vec<u8>) {
        encode_bytes(value, out);
    }

    fn decode(input: &mut &[u8]) -> Result<Self, CodecError> {
        decode_bytes(input)
    }
}

impl KeyPart for u64 {
    type Ref<'a> = u64;

    fn encode(value: u64, out: &mut Vec<u8>) {
        out.extend_from_slice(&value.to_be_bytes());
    }

    fn decode(input: &mut &[u8]) -> Result<Self, CodecError> {
        let (head, rest) = input.split_first_chunk::<8>().ok_or_else(|| CodecError("short integer in key".into()))?;
        *input = rest;
        Ok(u64::from_be_bytes(*head))
    }
}

impl<A: KeyPart, B: KeyPart> KeyPart for (A, B) {
    type Ref<'a> = (A::Ref<'a>, B::Ref<'a>);

    fn encode(value: Self::Ref<'_>, out: &mut Vec<u8>) {
        A::encode(value.0, out);
        B::encode(value.1, out);
    }

    fn decode(input: &mut &[u8]) -> Result<Self, CodecError> {
        Ok((A::decode(input)?, B::decode(input)?))
    }
}

impl<A: KeyPart, B: KeyPart, C: KeyPart> KeyPart for (A, B, C) {
    type Ref<'a> = (A::Ref<'a>, B::Ref<'a>, C::Ref<'a>);

    fn encode(value: Self::Ref<'_>, out: &mut Vec<u8>) {
        A::encode(value.0, out);
        B::encode(value.1, out);
        C::encode(value.2, out);
    }

    fn decode(input: &mut &[u8]) -> Result<Self, CodecError> {
        Ok((A::decode(input)?, B::decode(input)?, C::decode(input)?))
    }
}

impl<A: KeyPart, B: KeyPart, C: KeyPart, D: KeyPart> KeyPart for (A, B, C, D) {
    type Ref<'a> = (A::Ref<'a>, B::Ref<'a>, C::Ref<'a>, D::Ref<'a>);

    fn encode(value: Self::Ref<'_>, out: &mut Vec<u8>) {
        A::encode(value.0, out);
        B::encode(value.1, out);
        C::encode(value.2, out);
        D::encode(value.3, out);
    }

    fn decode(input: &mut &[u8]) -> Result<Self, CodecError> {
        Ok((A::decode(input)?, B::decode(input)?, C::decode(input)?, D::decode(input)?))
    }
}

impl<A: KeyPart, B: KeyPart, C: KeyPart, D: KeyPart, E: KeyPart> KeyPart for (A, B, C, D, E) {
    type Ref<'a> = (A::Ref<'a>, B::Ref<'a>, C::Ref<'a>, D::Ref<'a>, E::Ref<'a>);

    fn encode(value: Self::Ref<'_>, out: &mut Vec<u8>) {
        A::encode(value.0, out);
        B::encode(value.1, out);
        C::encode(value.2, out);
        D::encode(value.3, out);
        E::encode(value.4, out);
    }

    fn decode(input: &mut &[u8]) -> Result<Self, CodecError> {
        Ok((A::decode(input)?, B::decode(input)?, C::decode(input)?, D::decode(input)?, E::decode(input)?))
    }
}

/// Encodes a whole key.
pub fn encode_key<K: KeyPart>(key: K::Ref<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    K::encode(key, &mut out);
    out
}

/// Decodes a whole key, refusing trailing bytes.
pub fn decode_key<K: KeyPart>(mut bytes: &[u8]) -> Result<K, CodecError> {
    let key = K::decode(&mut bytes)?;
    if !bytes.is_empty() {
        return Err(CodecError("trailing bytes after key".into()));
    }
    Ok(key)
}

/// How a table's values are stored.
pub trait ValueCodec: Sized {
    fn encode_value(&self) -> Vec<u8>;
    fn decode_value(bytes: &[u8]) -> Result<Self, CodecError>;
}

impl ValueCodec for Vec<u8> {
    fn encode_value(&self) -> Vec<u8> {
        self.clone()
    }

    fn decode_value(bytes: &[u8]) -> Result<Self, CodecError> {
        Ok(bytes.to_vec())
    }
}

impl ValueCodec for u64 {
    fn encode_value(&self) -> Vec<u8> {
        self.to_be_bytes().to_vec()
    }

    fn decode_value(bytes: &[u8]) -> Result<Self, CodecError> {
        let arr: [u8; 8] = bytes.try_into().map_err(|_| CodecError("integer value of wrong length".into()))?;
        Ok(u64::from_be_bytes(arr))
    }
}

impl ValueCodec for String {
    fn encode_value(&self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }

    fn decode_value(bytes: &[u8]) -> Result<Self, CodecError> {
        String::from_utf8(bytes.to_vec()).map_err(|e| CodecError(e.to_string()))
    }
}

impl ValueCodec for () {
    fn encode_value(&self) -> Vec<u8> {
        Vec::new()
    }

    fn decode_value(_: &[u8]) -> Result<Self, CodecError> {
        Ok(())
    }
}

/// Stores the listed types as JSON: readable in a hex dump, tolerant of added fields.
/// Imported as `crate::store::codec::json_value` (a path, not the crate root, so that
/// services import it from the store layer they build on).
macro_rules! json_value {
    ($($ty:ty),+ $(,)?) => {$(
        impl $crate::store::codec::ValueCodec for $ty {
            fn encode_value(&self) -> Vec<u8> {
                // Serialising our own plain structs cannot fail.
                serde_json::to_vec(self).unwrap_or_default()
            }

            fn decode_value(bytes: &[u8]) -> Result<Self, $crate::store::codec::CodecError> {
                serde_json::from_slice(bytes)
                    .map_err(|e| $crate::store::codec::CodecError(e.to_string()))
            }
        }
    )+};
}
pub(crate) use json_value;

json_value!(serde_json::Value);

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(s: &str) -> Vec<u8> {
        encode_key::<String>(s)
    }

    #[test]
    fn strings_sort_like_their_text() {
        let mut words = ["b", "a", "ab", "a\0", "", "a\u{1}", "\0"];
        let mut encoded: Vec<_> = words.iter().map(|w| enc(w)).collect();
        words.sort();
        encoded.sort();
        let decoded: Vec<String> = encoded.iter().map(|e| decode_key(e).unwrap()).collect();
        assert_eq!(decoded, words);
    }

    #[test]
    fn tuple_prefix_is_first_part() {
        let key = encode_key::<(String, u64)>(("@a:x", 7));
        assert!(key.starts_with(&enc("@a:x")));
        let back: (String, u64) = decode_key(&key).unwrap();
        assert_eq!(back, ("@a:x".to_owned(), 7));
    }

    #[test]
    fn integers_sort_numerically() {
        let a = encode_key::<u64>(255);
        let b = encode_key::<u64>(256);
        assert!(a < b);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode_key::<String>(b"abc").is_err());
        assert!(decode_key::<u64>(b"abc").is_err());
        assert!(decode_key::<String>(b"a\0\x07").is_err());
    }
}
