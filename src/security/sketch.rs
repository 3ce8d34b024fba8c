//! Counting per client address (or user) in fixed memory: a count-min sketch of
//! atomic counters, per time window, updated on the request path without a lock.
//!
//! Why a sketch: a map of addresses grows with a flood of distinct addresses,
//! and a bounded map that evicts lets an attacker hide among them (its entry is
//! evicted between attempts). A count-min sketch never undercounts: an address
//! that crossed a threshold is always seen crossing it. It can overcount when
//! many distinct keys share its counters; with conservative update (only the
//! smallest of a key's counters grow) the error stays small until the number of
//! distinct keys in a window nears the sketch's width.
//!
//! Windows: counts go to the current window; the previous window's count is
//! added in proportion to how much of it the sliding window still covers (the
//! "sliding window counter"), so N events within any window's length are seen
//! together even when they straddle a boundary. The rotation is done by the
//! security thread; the request path only reads which window is current.
//!
//! Keys are hashed with a per-process random key, so nobody outside can choose
//! addresses that share counters.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

/// Rows of a sketch (independent hashes).
pub(crate) const DEPTH: usize = 4;

/// The random key of this process's hashes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HashKey(u64, u64);

impl HashKey {
    pub(crate) fn random() -> HashKey {
        use std::hash::BuildHasher;
        let s = std::collections::hash_map::RandomState::new();
        HashKey(s.hash_one(0u64), s.hash_one(1u64))
    }

    /// The hash of an address (IPv4-mapped IPv6 hashes as IPv4).
    pub(crate) fn ip(self, ip: IpAddr) -> u64 {
        let bits = match ip {
            IpAddr::V4(v4) => u128::from(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => u128::from(u32::from(v4)),
                None => u128::from(v6) ^ (1 << 127),
            },
        };
        let a = fold(bits as u64 ^ self.0, 0x9e37_79b9_7f4a_7c15);
        fold(a ^ (bits >> 64) as u64, self.1 | 1)
    }

    /// The hash of a string (a user name).
    pub(crate) fn str(self, s: &str) -> u64 {
        let mut h = self.1;
        for chunk in s.as_bytes().chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            h = fold(h ^ u64::from_le_bytes(word), 0x9e37_79b9_7f4a_7c15 ^ self.0);
        }
        fold(h ^ s.len() as u64, self.0 | 1)
    }

    /// The hash of two hashes together (an address and a user).
    pub(crate) fn pair(self, a: u64, b: u64) -> u64 {
        fold(a ^ self.0, b | 1)
    }
}

/// A folded 64×64→128 multiply: the mixing step of foldhash and wyhash.
fn fold(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

/// A key's counts after it was added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Count {
    /// In the current window.
    pub(crate) current: u32,
    /// Over the sliding window ending now.
    pub(crate) sliding: u32,
}

/// A windowed count-min sketch; see the module docs.
#[derive(Debug)]
pub(crate) struct Sketch {
    width: usize,
    depth: usize,
    window_ms: u64,
    /// Current, previous and a zeroed spare, by `epoch % 3`.
    counts: [Box<[AtomicU32]>; 3],
    /// One bit per column of row 0 and row 1: keys already reported this window.
    flags: [Box<[AtomicU64]>; 3],
    /// Exponential moving average of closed windows' counts, in 1/256ths; empty
    /// when the sketch keeps no baseline.
    baseline: Box<[AtomicU32]>,
    alpha: f64,
    /// Distinct keys added per window (by `epoch % 3`; a key whose counters
    /// were all taken reads as seen): how full the counters are.
    totals: [AtomicU64; 3],
    /// The epoch (plus one) whose saturation was reported.
    saturation_reported: AtomicU64,
    epoch: AtomicU64,
    started_ms: AtomicU64,
}

fn zeroed<T: Default>(n: usize) -> Box<[T]> {
    (0..n).map(|_| T::default()).collect()
}

impl Sketch {
    /// A sketch `width` counters wide (a power of two) and `depth` rows; with
    /// `baseline_windows`, it keeps a moving average over about that many
    /// windows.
    pub(crate) fn new(width: usize, depth: usize, window_ms: u64, baseline_windows: Option<u32>) -> Sketch {
        debug_assert!(width.is_power_of_two() && (1..=DEPTH).contains(&depth));
        let cells = width * depth;
        let flag_words = (2 * width).div_ceil(64);
        Sketch {
            width,
            depth,
            window_ms: window_ms.max(1),
            counts: [zeroed(cells), zeroed(cells), zeroed(cells)],
            flags: [zeroed(flag_words), zeroed(flag_words), zeroed(flag_words)],
            baseline: zeroed(if baseline_windows.is_some() { cells } else { 0 }),
            alpha: baseline_windows.map_or(0.0, |n| 2.0 / (f64::from(n.max(1)) + 1.0)),
            totals: Default::default(),
            saturation_reported: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            started_ms: AtomicU64::new(0),
        }
    }

    /// Bytes of counters a sketch of this shape holds.
    pub(crate) fn bytes_for(width: usize, depth: usize, baseline: bool) -> usize {
        let cells = width * depth;
        let counters = 3 * cells * 4 + if baseline { cells * 4 } else { 0 };
        counters + 3 * (2 * width).div_ceil(64) * 8
    }

    pub(crate) fn bytes(&self) -> usize {
        Sketch::bytes_for(self.width, self.depth, !self.baseline.is_empty())
    }

    fn cell(&self, h: u64, row: usize) -> usize {
        let h1 = h as u32 as usize;
        let h2 = (h >> 32) as usize | 1;
        row * self.width + (h1.wrapping_add(row.wrapping_mul(h2)) & (self.width - 1))
    }

    fn epoch(&self) -> usize {
        (self.epoch.load(Relaxed) % 3) as usize
    }

    /// Counts one event of key `h` at `now_ms` (milliseconds on the monitor's
    /// clock) and returns its counts.
    pub(crate) fn add(&self, h: u64, now_ms: u64) -> Count {
        let e = self.epoch();
        let current = self.add_current(h, e);
        let prev = self.min_in(&self.counts[(e + 2) % 3], h);
        let elapsed = now_ms.saturating_sub(self.started_ms.load(Relaxed));
        let left = self.window_ms.saturating_sub(elapsed);
        // Rounded: a boundary never hides the last event of a burst.
        let carried = ((u64::from(prev) * left + self.window_ms / 2) / self.window_ms) as u32;
        Count {
            current,
            sliding: current.saturating_add(carried),
        }
    }

    /// Counts one event of key `h` and returns its count in the current
    /// window only (the traffic-spike detector's tumbling windows).
    pub(crate) fn add_tumbling(&self, h: u64) -> u32 {
        self.add_current(h, self.epoch())
    }

    /// Conservative update: only the key's smallest counters grow.
    fn add_current(&self, h: u64, e: usize) -> u32 {
        let cur = &self.counts[e];
        let mut cells = [0usize; DEPTH];
        let mut values = [u32::MAX; DEPTH];
        for row in 0..self.depth {
            cells[row] = self.cell(h, row);
            values[row] = cur[cells[row]].load(Relaxed);
        }
        let min = values.iter().copied().min().unwrap_or(0);
        if min == 0 && self.width > 1 {
            self.totals[e].fetch_add(1, Relaxed);
        }
        for row in 0..self.depth {
            if values[row] == min {
                cur[cells[row]].fetch_add(1, Relaxed);
            }
        }
        min.saturating_add(1)
    }

    fn min_in(&self, counts: &[AtomicU32], h: u64) -> u32 {
        (0..self.depth)
            .map(|row| counts[self.cell(h, row)].load(Relaxed))
            .min()
            .unwrap_or(0)
    }

    /// The key's count in the current window, without adding.
    #[cfg(test)]
    pub(crate) fn current(&self, h: u64) -> u32 {
        self.min_in(&self.counts[self.epoch()], h)
    }

    /// The key's moving average per window (0 without a baseline).
    pub(crate) fn baseline(&self, h: u64) -> f64 {
        if self.baseline.is_empty() {
            return 0.0;
        }
        f64::from(self.min_in(&self.baseline, h)) / 256.0
    }

    /// Whether the counters are too full to tell keys apart: more distinct
    /// keys over the sliding window than half the width. Past that, a key never
    /// seen finds all its counters taken often enough that its count cannot be
    /// believed, and per-key detections give way to one saturation report per
    /// window ([`Sketch::report_saturation`]).
    pub(crate) fn saturated(&self) -> bool {
        let e = self.epoch();
        let keys = self.totals[e].load(Relaxed) + self.totals[(e + 2) % 3].load(Relaxed);
        self.width > 1 && keys > self.width as u64 / 2
    }

    /// True the first time it is called in a window: saturation is reported
    /// once per window.
    pub(crate) fn report_saturation(&self) -> bool {
        let mark = self.epoch.load(Relaxed) + 1;
        self.saturation_reported.swap(mark, Relaxed) != mark
    }

    /// Marks key `h` as reported in this window: true the first time. Two bits
    /// (a small Bloom filter), so a key is rarely taken for another one.
    pub(crate) fn flag(&self, h: u64) -> bool {
        let flags = &self.flags[self.epoch()];
        let mut fresh = false;
        for row in 0..2 {
            let bit = row * self.width + (self.cell(h, row) % self.width);
            let mask = 1u64 << (bit % 64);
            let word = &flags[bit / 64];
            // Read first: a key that stays over its limit checks, without
            // writing, on every later request of the window.
            if word.load(Relaxed) & mask == 0 {
                fresh |= word.fetch_or(mask, Relaxed) & mask == 0;
            }
        }
        fresh
    }

    /// Closes the windows that ended by `now_ms`: the current one becomes the
    /// previous one, the spare (zeroed) becomes current, and the baseline takes
    /// in what closed. Called by one thread.
    pub(crate) fn rotate(&self, now_ms: u64) {
        let started = self.started_ms.load(Relaxed);
        let closed = now_ms.saturating_sub(started) / self.window_ms;
        if closed == 0 {
            return;
        }
        let e = self.epoch();
        if !self.baseline.is_empty() {
            // The window that closed, then `closed - 1` empty ones.
            let keep = (1.0 - self.alpha).powi(i32::try_from(closed - 1).unwrap_or(i32::MAX));
            for (b, c) in self.baseline.iter().zip(self.counts[e].iter()) {
                let avg =
                    f64::from(b.load(Relaxed)) * (1.0 - self.alpha) + f64::from(c.load(Relaxed)) * 256.0 * self.alpha;
                b.store((avg * keep).min(f64::from(u32::MAX)) as u32, Relaxed);
            }
        }
        if closed > 1 {
            // Idle for more than a window: nothing is left to carry over.
            clear(&self.counts[e]);
        }
        self.started_ms.store(started + closed * self.window_ms, Relaxed);
        self.epoch.fetch_add(1, Relaxed);
        // The old previous window is the next spare.
        let spare = (e + 2) % 3;
        clear(&self.counts[spare]);
        clear(&self.flags[spare]);
        self.totals[spare].store(0, Relaxed);
        if closed > 1 {
            self.totals[e].store(0, Relaxed);
        }
    }
}

fn clear<T: ClearCell>(cells: &[T]) {
    for c in cells {
        c.clear();
    }
}

trait ClearCell {
    fn clear(&self);
}

impl ClearCell for AtomicU32 {
    fn clear(&self) {
        self.store(0, Relaxed);
    }
}

impl ClearCell for AtomicU64 {
    fn clear(&self) {
        self.store(0, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(i: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(i))
    }

    #[test]
    fn counts_are_exact_for_few_keys_and_never_under_for_many() {
        let key = HashKey::random();
        let s = Sketch::new(1024, DEPTH, 1000, None);
        for _ in 0..7 {
            s.add(key.ip(ip(1)), 0);
        }
        assert_eq!(s.add(key.ip(ip(2)), 0).current, 1);
        assert_eq!(s.current(key.ip(ip(1))), 7);
        // 20,000 distinct keys in 1,024 columns: overcounts, never under.
        for i in 10..20_010 {
            s.add(key.ip(ip(i)), 0);
        }
        assert!(s.current(key.ip(ip(1))) >= 7);
        assert!(s.add(key.ip(ip(3)), 0).current >= 1);
    }

    #[test]
    fn the_previous_window_counts_in_proportion_to_what_the_sliding_window_covers() {
        let key = HashKey::random();
        let h = key.ip(ip(9));
        let s = Sketch::new(64, DEPTH, 1000, None);
        for _ in 0..10 {
            s.add(h, 100);
        }
        s.rotate(1000);
        // A quarter into the next window, three quarters of the last one count.
        assert_eq!(
            s.add(h, 1250),
            Count {
                current: 1,
                sliding: 1 + 8
            }
        );
        s.rotate(2000);
        assert_eq!(s.add(h, 2000).sliding, 1 + 1);
        // Idle for more than a window: nothing carries over.
        s.rotate(5000);
        assert_eq!(s.add(h, 5000), Count { current: 1, sliding: 1 });
    }

    #[test]
    fn more_distinct_keys_than_half_the_width_saturate_a_sketch_once_per_window() {
        let key = HashKey::random();
        let s = Sketch::new(1024, DEPTH, 1000, None);
        // One key, many times: not full.
        for _ in 0..10_000 {
            s.add(key.ip(ip(1)), 0);
        }
        assert!(!s.saturated());
        for i in 2..600 {
            s.add(key.ip(ip(i)), 0);
        }
        assert!(s.saturated());
        assert!(s.report_saturation());
        assert!(!s.report_saturation());
        s.rotate(1000);
        s.rotate(2000);
        assert!(!s.saturated());
        assert!(s.report_saturation());
    }

    #[test]
    fn a_key_is_flagged_once_per_window() {
        let key = HashKey::random();
        let s = Sketch::new(256, DEPTH, 1000, None);
        assert!(s.flag(key.ip(ip(1))));
        assert!(!s.flag(key.ip(ip(1))));
        assert!(s.flag(key.ip(ip(2))));
        s.rotate(1000);
        assert!(s.flag(key.ip(ip(1))));
    }

    #[test]
    fn the_baseline_follows_the_average_of_closed_windows() {
        let key = HashKey::random();
        let h = key.ip(ip(5));
        let s = Sketch::new(64, DEPTH, 1000, Some(3));
        for w in 0..20u64 {
            for _ in 0..10 {
                s.add(h, w * 1000);
            }
            s.rotate((w + 1) * 1000);
        }
        assert!((s.baseline(h) - 10.0).abs() < 0.1, "{}", s.baseline(h));
        // Quiet windows pull it down.
        s.rotate(25_000);
        assert!(s.baseline(h) < 1.0, "{}", s.baseline(h));
    }

    #[test]
    fn mapped_ipv4_hashes_as_ipv4_and_hashes_differ_by_key() {
        let key = HashKey::random();
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(key.ip(v4), key.ip(mapped));
        assert_ne!(key.ip(v4), HashKey::random().ip(v4));
        assert_ne!(key.str("alice"), key.str("alicf"));
    }
}
