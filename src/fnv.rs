//! FNV-1a, for keys the crate itself makes from short, trusted values (a route
//! template, a method, a few small integers): SipHash's resistance to chosen
//! keys buys nothing there, and FNV-1a costs a few instructions a byte.

/// An FNV-1a hash being computed.
pub(crate) struct Fnv1a(u64);

impl Fnv1a {
    #[inline]
    pub(crate) fn new() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }

    /// Goes on from a hash already computed (to fold more bytes into it).
    #[inline]
    pub(crate) fn resume(hash: u64) -> Self {
        Fnv1a(hash)
    }

    #[inline]
    pub(crate) fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    #[inline]
    pub(crate) fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn matches_the_reference_values() {
        let hash = |s: &str| {
            let mut h = super::Fnv1a::new();
            h.write(s.as_bytes());
            h.finish()
        };
        assert_eq!(hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(hash("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(hash("foobar"), 0x8594_4171_f739_67e8);
    }
}
