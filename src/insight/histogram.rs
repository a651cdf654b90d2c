//! Log-bucketed latency histogram: what the rollups keep instead of raw timings.
//!
//! Each hourly or daily rollup row stores one [`Histogram`] per latency it summarises, as a
//! PostgreSQL `bigint[]` of counts indexed by bucket ([`Histogram::as_slice`]). Rollups of a
//! longer period merge those arrays ([`Histogram::merge`]) and read percentiles from the result
//! ([`Histogram::quantile`]), so no percentile ever needs the raw results again.
//!
//! ```text
//!  bucket:   0        1            2                     i                   BUCKETS-1
//!         [0, MIN) [MIN, MIN·r) [MIN·r, MIN·r²) … [MIN·r^(i-1), MIN·r^i) … [MIN·r^(BUCKETS-2), ∞]
//! ```
//!
//! With `r` = [`RATIO`] = 1.15 a bucket's geometric midpoint, which is what a percentile
//! reports, is within 7.24% of every value in the bucket. Values below [`MIN_MS`] (and zero,
//! negatives and NaN) share bucket 0; the last bucket starts at about 628 s, past [`MAX_MS`],
//! and also takes +inf.
//!
//! Bucket edges come from a table built at compile time by repeated multiplication, which IEEE
//! rounds the same everywhere: the bucket of a value never depends on the platform's `ln`/`powi`,
//! so arrays written by one build mean the same to every other.

/// Lower edge of bucket 1; everything below (sub-0.1 ms loopback timings, 0, negatives, NaN)
/// is bucket 0. Finer resolution there says nothing about a website.
pub const MIN_MS: f64 = 0.1;

/// Ratio of consecutive bucket edges. The geometric midpoint of `[a, 1.15a)` is `a·√1.15`,
/// at most 7.24% from any value of the bucket (the ±7.5% we promise for percentiles).
pub const RATIO: f64 = 1.15;

/// The largest latency that must still land in a bounded bucket: 10 minutes, far past any
/// sensible check timeout. Slower checks (timeouts are only bounded by the interval) still
/// count, in the last bucket, whose reported value is its lower edge.
pub const MAX_MS: f64 = 600_000.0;

/// Number of buckets: bucket 0, then as many bounded buckets as it takes for their top edge to
/// reach [`MAX_MS`], then the open-ended last bucket. Evaluates to 114.
pub const BUCKETS: usize = {
    let mut edge = MIN_MS;
    let mut bounded = 0;
    while edge < MAX_MS {
        edge *= RATIO;
        bounded += 1;
    }
    bounded + 2
};

/// `LOWER[i]` is the lower edge of bucket `i` (`LOWER[0]` = 0); bucket `i` ends where `i + 1`
/// starts. Built by repeated multiplication so edges are identical on every platform.
const LOWER: [f64; BUCKETS] = {
    let mut lower = [0.0; BUCKETS];
    let mut edge = MIN_MS;
    let mut i = 1;
    while i < BUCKETS {
        lower[i] = edge;
        edge *= RATIO;
        i += 1;
    }
    lower
};

/// The bucket of a latency in milliseconds. Never panics: NaN and anything below [`MIN_MS`]
/// go to bucket 0, +inf to the last bucket.
pub fn bucket_of(ms: f64) -> usize {
    if ms.is_nan() || ms < MIN_MS {
        return 0;
    }
    LOWER.partition_point(|&edge| edge <= ms) - 1
}

/// `(lower, upper)` edges of bucket `i`: it holds `lower <= ms < upper`. Bucket 0 reports
/// `(0, MIN_MS)`, the last bucket `(…, +inf)`. An index past the end means the last bucket
/// (see [`Histogram::from_counts`]).
pub fn bucket_bounds(i: usize) -> (f64, f64) {
    let i = i.min(BUCKETS - 1);
    let upper = LOWER.get(i + 1).copied().unwrap_or(f64::INFINITY);
    (LOWER[i], upper)
}

/// The value reported for a quantile that falls in bucket `i`: the geometric midpoint of its
/// edges; `MIN_MS / 2` for bucket 0 (it has no geometric midpoint); the lower edge for the
/// open-ended last bucket (a lower bound is the honest answer there).
pub fn bucket_value(i: usize) -> f64 {
    match bucket_bounds(i) {
        (_, upper) if i == 0 => upper / 2.0,
        (lower, upper) if upper.is_finite() => (lower * upper).sqrt(),
        (lower, _) => lower,
    }
}

/// Counts of latencies per bucket.
///
/// Invariants, kept by every constructor and method: no negative count, no trailing zero
/// bucket (so fast sites store short arrays), at most [`BUCKETS`] entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Histogram {
    /// `counts[i]` = how many values fell in bucket `i`; the `bigint[]` stored in PostgreSQL.
    counts: Vec<i64>,
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self::default()
    }

    /// A histogram from a stored array. Negative counts (corrupt data) count as 0; entries past
    /// the last bucket (written by a build with more buckets) are folded into the last bucket.
    pub fn from_counts(counts: Vec<i64>) -> Self {
        let mut histogram = Self::new();
        histogram.merge(&counts);
        histogram
    }

    /// Counts one latency in milliseconds.
    pub fn record(&mut self, ms: f64) {
        self.add(bucket_of(ms), 1);
    }

    /// Adds another histogram's counts (`other.as_slice()` or a stored array) bucket by bucket.
    pub fn merge(&mut self, other: &[i64]) {
        for (i, &count) in other.iter().enumerate() {
            self.add(i, count);
        }
    }

    /// Takes another histogram's counts away bucket by bucket (a running total minus an earlier
    /// one); a bucket never goes below 0, and trailing zeros are trimmed again.
    pub fn subtract(&mut self, other: &[i64]) {
        for (i, &count) in other.iter().enumerate() {
            let i = i.min(BUCKETS - 1);
            if let Some(mine) = self.counts.get_mut(i) {
                *mine = mine.saturating_sub(count.max(0)).max(0);
            }
        }
        while self.counts.last() == Some(&0) {
            self.counts.pop();
        }
    }

    /// How many values were recorded.
    pub fn total(&self) -> i64 {
        self.counts.iter().fold(0, |sum, &c| sum.saturating_add(c))
    }

    /// The value at quantile `q` (0.5 = median, 0.99 = p99) as [`bucket_value`] of the bucket
    /// holding the value of rank `ceil(q·total)`. `q` is clamped to `[0, 1]`; `None` when the
    /// histogram is empty or `q` is NaN.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.total();
        if total == 0 || q.is_nan() {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as i64).clamp(1, total);
        let mut seen = 0i64;
        let bucket = self.counts.iter().position(|&count| {
            seen = seen.saturating_add(count);
            seen >= rank
        })?;
        Some(bucket_value(bucket))
    }

    /// The counts by bucket, trailing zeros trimmed: what to store.
    pub fn as_slice(&self) -> &[i64] {
        &self.counts
    }

    /// Adds `count` (negatives ignored) to bucket `i` (past the end: the last bucket), keeping
    /// the invariants.
    fn add(&mut self, i: usize, count: i64) {
        if count <= 0 {
            return;
        }
        let i = i.min(BUCKETS - 1);
        if self.counts.len() <= i {
            self.counts.resize(i + 1, 0);
        }
        self.counts[i] = self.counts[i].saturating_add(count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `per_decade` log-spaced values per decade, from 10^lo to 10^hi ms.
    fn log_sweep(lo: f64, hi: f64, per_decade: u32) -> impl Iterator<Item = f64> {
        let steps = ((hi - lo) * per_decade as f64) as u32;
        (0..=steps).map(move |k| 10f64.powf(lo + k as f64 / per_decade as f64))
    }

    /// The largest f64 below a positive `x` (`f64::next_down` needs Rust 1.86).
    fn below(x: f64) -> f64 {
        f64::from_bits(x.to_bits() - 1)
    }

    fn histogram_of(values: impl IntoIterator<Item = f64>) -> Histogram {
        let mut h = Histogram::new();
        values.into_iter().for_each(|v| h.record(v));
        h
    }

    #[test]
    fn bucket_count_covers_ten_minutes() {
        assert_eq!(BUCKETS, 114);
        let (last_lower, last_upper) = bucket_bounds(BUCKETS - 1);
        assert!(last_lower >= MAX_MS, "{last_lower}");
        assert_eq!(last_upper, f64::INFINITY);
        let (_, below_last) = bucket_bounds(BUCKETS - 2);
        assert!(bucket_bounds(BUCKETS - 2).0 < MAX_MS, "one bucket too many");
        assert_eq!(below_last, last_lower);
    }

    #[test]
    fn bucket_of_values() {
        let last = BUCKETS - 1;
        let cases: &[(f64, usize)] = &[
            (f64::NAN, 0),
            (f64::NEG_INFINITY, 0),
            (-5.0, 0),
            (-0.0, 0),
            (0.0, 0),
            (0.0999, 0),
            (MIN_MS, 1),
            (MIN_MS * RATIO, 2),
            (MIN_MS * RATIO * RATIO, 3),
            (0.1149, 1),
            (1.0, 17),    // 0.1·1.15^16 = 0.936, 0.1·1.15^17 = 1.076
            (1000.0, 66), // 0.1·1.15^65 = 881.8, 0.1·1.15^66 = 1014.0
            (MAX_MS, last - 1),
            (1e12, last),
            (f64::MAX, last),
            (f64::INFINITY, last),
        ];
        for &(ms, want) in cases {
            assert_eq!(bucket_of(ms), want, "bucket_of({ms})");
        }
    }

    #[test]
    fn edges_are_exact() {
        for i in 1..BUCKETS {
            let (lower, upper) = bucket_bounds(i);
            assert_eq!(bucket_of(lower), i, "lower edge of {i}");
            assert_eq!(bucket_of(below(lower)), i - 1, "just below {i}");
            if upper.is_finite() {
                assert_eq!(bucket_of(below(upper)), i, "just below top of {i}");
                assert_eq!(bucket_bounds(i + 1).0, upper, "{i} and {} touch", i + 1);
            }
        }
        assert_eq!(bucket_bounds(0), (0.0, MIN_MS));
        assert_eq!(bucket_bounds(BUCKETS + 7), bucket_bounds(BUCKETS - 1));
    }

    #[test]
    fn bucket_of_is_monotonic() {
        let values: Vec<f64> = log_sweep(-3.0, 7.0, 2000).collect();
        for pair in values.windows(2) {
            assert!(bucket_of(pair[0]) <= bucket_of(pair[1]), "{pair:?}");
        }
    }

    #[test]
    fn bucket_value_within_7_5_percent() {
        for v in log_sweep(-1.0, MAX_MS.log10(), 5000).chain([MIN_MS, MAX_MS]) {
            let reported = bucket_value(bucket_of(v));
            let error = (reported - v).abs() / v;
            assert!(
                error <= 0.075,
                "{v} reported as {reported} ({:.2}%)",
                error * 100.0
            );
        }
    }

    #[test]
    fn bucket_values_of_special_buckets() {
        let cases: &[(usize, f64)] = &[
            (0, MIN_MS / 2.0),
            (1, (bucket_bounds(1).0 * bucket_bounds(1).1).sqrt()),
            (66, (bucket_bounds(66).0 * bucket_bounds(66).1).sqrt()),
            (BUCKETS - 1, bucket_bounds(BUCKETS - 1).0),
            (usize::MAX, bucket_bounds(BUCKETS - 1).0),
        ];
        for &(i, want) in cases {
            assert_eq!(bucket_value(i), want, "bucket {i}");
        }
    }

    #[test]
    fn quantiles_of_uniform_1_to_1000() {
        let h = histogram_of((1..=1000).map(f64::from));
        assert_eq!(h.total(), 1000);
        let cases: &[(f64, f64)] = &[
            (0.0, 1.0),
            (0.01, 10.0),
            (0.5, 500.0),
            (0.9, 900.0),
            (0.99, 990.0),
            (1.0, 1000.0),
            (-3.0, 1.0),
            (7.0, 1000.0),
        ];
        for &(q, exact) in cases {
            let got = h.quantile(q).unwrap();
            let bucket_gap = bucket_of(got).abs_diff(bucket_of(exact));
            assert!(bucket_gap <= 1, "q={q}: got {got}, exact {exact}");
            assert!(
                (got - exact).abs() / exact <= 0.075,
                "q={q}: got {got}, exact {exact}"
            );
        }
    }

    #[test]
    fn quantile_rank_walk() {
        // Counts 2 in bucket 1, 0 in bucket 2, 3 in bucket 5: ranks 1-2 → 1, ranks 3-5 → 5.
        let h = Histogram::from_counts(vec![0, 2, 0, 0, 0, 3]);
        let cases: &[(f64, usize)] = &[(0.0, 1), (0.2, 1), (0.4, 1), (0.41, 5), (0.6, 5), (1.0, 5)];
        for &(q, bucket) in cases {
            assert_eq!(h.quantile(q), Some(bucket_value(bucket)), "q={q}");
        }
    }

    #[test]
    fn empty_and_nan_have_no_quantile() {
        let cases: &[(Histogram, f64)] = &[
            (Histogram::new(), 0.5),
            (Histogram::from_counts(vec![0, 0, 0]), 0.5),
            (Histogram::from_counts(vec![-4, -1]), 0.99),
            (histogram_of([3.0]), f64::NAN),
        ];
        for (h, q) in cases {
            assert_eq!(h.quantile(*q), None, "{h:?} q={q}");
        }
    }

    #[test]
    fn merge_equals_histogram_of_concatenation() {
        let a: Vec<f64> = log_sweep(-2.0, 3.0, 37).collect();
        let b: Vec<f64> = vec![0.0, 5.0, 5.0, 250.0, 1e9, f64::NAN, 42.0];
        let cases: &[(&[f64], &[f64])] = &[(&a, &b), (&b, &a), (&[], &a), (&b, &[]), (&[], &[])];
        for &(left, right) in cases {
            let mut merged = histogram_of(left.iter().copied());
            merged.merge(histogram_of(right.iter().copied()).as_slice());
            let whole = histogram_of(left.iter().chain(right).copied());
            assert_eq!(merged, whole);
            assert_eq!(merged.total(), (left.len() + right.len()) as i64);
        }
    }

    #[test]
    fn stored_arrays_are_trimmed_and_sanitised() {
        let last = BUCKETS - 1;
        let mut beyond = vec![0; BUCKETS + 2];
        beyond[last] = 1;
        beyond[BUCKETS + 1] = 2;
        let mut beyond_want = vec![0; BUCKETS];
        beyond_want[last] = 3;
        let cases: Vec<(Vec<i64>, Vec<i64>)> = vec![
            (vec![], vec![]),
            (vec![0, 0, 0], vec![]),
            (vec![1, 0, 2, 0, 0], vec![1, 0, 2]),
            (vec![3, -2, 0, -1], vec![3]),
            (vec![i64::MAX, 0], vec![i64::MAX]),
            (beyond, beyond_want),
        ];
        for (stored, want) in cases {
            assert_eq!(
                Histogram::from_counts(stored.clone()).as_slice(),
                want,
                "{stored:?}"
            );
        }
    }

    #[test]
    fn small_latencies_give_short_arrays() {
        let cases: &[(&[f64], usize)] = &[
            (&[], 0),
            (&[0.0], 1),
            (&[0.05, 0.1], 2),
            (&[1.0, 0.5], 18),
            (&[f64::INFINITY], BUCKETS),
        ];
        for &(values, len) in cases {
            assert_eq!(
                histogram_of(values.iter().copied()).as_slice().len(),
                len,
                "{values:?}"
            );
        }
    }

    #[test]
    fn counts_saturate_instead_of_overflowing() {
        let mut h = Histogram::from_counts(vec![i64::MAX]);
        h.record(0.0);
        h.merge(&[i64::MAX, i64::MAX]);
        assert_eq!(h.as_slice(), &[i64::MAX, i64::MAX]);
        assert_eq!(h.total(), i64::MAX);
        assert_eq!(h.quantile(1.0), Some(bucket_value(0)));
    }
}
