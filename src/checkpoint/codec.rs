//! The byte layout of every snapshot: little-endian fixed-width integers and
//! length-prefixed byte strings, written into a reusable buffer (no
//! allocation once the buffer has reached its working size) and read back
//! with every length checked, so a damaged snapshot is an error, never a
//! panic or a huge allocation.

use std::fmt;

/// Appends to a caller-owned buffer; the caller clears and reuses it.
pub struct Writer<'a> {
    pub out: &'a mut Vec<u8>,
}

impl<'a> Writer<'a> {
    pub fn new(out: &'a mut Vec<u8>) -> Writer<'a> {
        Writer { out }
    }

    #[inline]
    pub fn u8(&mut self, v: u8) {
        self.out.push(v);
    }

    #[inline]
    pub fn u32(&mut self, v: u32) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }

    #[inline]
    pub fn u64(&mut self, v: u64) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }

    #[inline]
    pub fn i64(&mut self, v: i64) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }

    pub fn bytes(&mut self, v: &[u8]) {
        self.u32(v.len() as u32);
        self.out.extend_from_slice(v);
    }

    pub fn str(&mut self, v: &str) {
        self.bytes(v.as_bytes());
    }
}

/// A snapshot that does not decode: truncated, or a value out of range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Reader<'a> {
        Reader { data, pos: 0 }
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).filter(|&end| end <= self.data.len()).ok_or_else(|| {
            DecodeError(format!("truncated: wanted {n} bytes at offset {}, have {}", self.pos, self.data.len()))
        })?;
        let bytes = &self.data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    pub fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    pub fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    pub fn string(&mut self) -> Result<String, DecodeError> {
        let bytes = self.bytes()?;
        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError("string is not UTF-8".into()))
    }

    /// A count of items of at least `item_bytes` each, checked against what
    /// is left, so a damaged count cannot make the caller allocate wildly.
    pub fn count(&mut self, item_bytes: usize) -> Result<usize, DecodeError> {
        let n = self.u64()? as usize;
        if n.saturating_mul(item_bytes.max(1)) > self.data.len() - self.pos {
            return Err(DecodeError(format!("count {n} at offset {} exceeds the snapshot", self.pos - 8)));
        }
        Ok(n)
    }

    pub fn is_empty(&self) -> bool {
        self.pos == self.data.len()
    }

    /// Every byte must have been consumed.
    pub fn finish(self) -> Result<(), DecodeError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(DecodeError(format!("{} trailing bytes", self.data.len() - self.pos)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn values_round_trip(a in any::<u8>(), b in any::<u32>(), c in any::<u64>(), d in any::<i64>(),
                             s in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut buf = Vec::new();
            let mut w = Writer::new(&mut buf);
            w.u8(a); w.u32(b); w.u64(c); w.i64(d); w.bytes(&s);
            let mut r = Reader::new(&buf);
            prop_assert_eq!(r.u8().unwrap(), a);
            prop_assert_eq!(r.u32().unwrap(), b);
            prop_assert_eq!(r.u64().unwrap(), c);
            prop_assert_eq!(r.i64().unwrap(), d);
            prop_assert_eq!(r.bytes().unwrap(), &s[..]);
            prop_assert!(r.finish().is_ok());
        }

        /// Any prefix of a valid encoding fails cleanly: no panic.
        #[test]
        fn truncation_is_an_error(cut in 0usize..29) {
            let mut buf = Vec::new();
            let mut w = Writer::new(&mut buf);
            w.u64(1); w.bytes(b"0123456789"); w.u64(3);
            let short = &buf[..cut.min(buf.len() - 1)];
            let mut r = Reader::new(short);
            let result = r.u64().and_then(|_| r.bytes().map(|_| ())).and_then(|_| r.u64());
            prop_assert!(result.is_err());
        }
    }

    #[test]
    fn a_huge_count_is_refused() {
        let mut buf = Vec::new();
        Writer::new(&mut buf).u64(u64::MAX / 2);
        assert!(Reader::new(&buf).count(8).is_err());
    }
}
