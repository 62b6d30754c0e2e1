//! The ketama continuum, exactly as twemproxy builds it (float32 point counts, md5 of `name-i`).
//!
//! Consistent hashing only keeps keys in place across a migration if every point on the ring is
//! where nutcracker puts it, so this follows `nc_ketama.c` step by step:
//!
//! - only live servers get points, walked in twemproxy's server order (sorted by name);
//! - a server's share is `pct = weight / total_live_weight` in `f32`, and its point count is
//!   `floorf((float)(pct * 160 / 4 * n_live + 1e-10)) * 4`, each step rounded to `f32` (the
//!   `+ 1e-10` is done in `f64` and rounded back, as the C promotes to `double` there);
//! - points come from `md5("{name}-{i}")` for `i` in `0..points/4`, four little-endian `u32`
//!   words per digest;
//! - lookup takes the first point whose value is `>= hash`, wrapping to the first point.

use super::hash::md5;

/// twemproxy's `KETAMA_POINTS_PER_SERVER`.
pub const POINTS_PER_SERVER: u32 = 160;
/// Points taken from one md5 digest.
const POINTS_PER_HASH: u32 = 4;

/// One point on the ring: a hash value and the server (caller's index) that owns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Point {
    pub value: u32,
    pub server: usize,
}

/// A built continuum. Immutable; rebuild it when the set of live servers changes.
#[derive(Clone, Debug, Default)]
pub struct Continuum {
    points: Vec<Point>,
}

/// A live server as the continuum sees it.
#[derive(Clone, Copy, Debug)]
pub struct RingServer<'a> {
    /// The twemproxy name (hashed into the points).
    pub name: &'a [u8],
    pub weight: u32,
    /// What `dispatch` returns for this server's points.
    pub server: usize,
}

/// The number of points twemproxy gives a server of `weight` out of `total_weight`
/// among `n_live` live servers, with C's float32 arithmetic.
pub fn points_for(weight: u32, total_weight: u32, n_live: u32) -> u32 {
    let pct = weight as f32 / total_weight as f32;
    let per = pct * POINTS_PER_SERVER as f32 / 4.0f32 * n_live as f32;
    // `+ 0.0000000001` is a double literal: the sum is computed in f64, then cast to float.
    let adjusted = (f64::from(per) + 0.000_000_000_1) as f32;
    (adjusted.floor() * 4.0f32) as u32
}

impl Continuum {
    /// Build the ring from the live servers, given in twemproxy's server order (sorted by name).
    /// `n_live` and the total weight are taken from `servers` itself.
    pub fn build(servers: &[RingServer<'_>]) -> Continuum {
        let n_live = servers.len() as u32;
        let total_weight: u32 = servers.iter().map(|s| s.weight).sum();
        let mut points = Vec::with_capacity(servers.len() * POINTS_PER_SERVER as usize);
        for s in servers {
            let n = points_for(s.weight, total_weight, n_live);
            for i in 0..n / POINTS_PER_HASH {
                // twemproxy formats into an 86-byte buffer; names that long (> ~75 bytes) are
                // undefined behaviour there, so no attempt is made to mimic it.
                let mut host = Vec::with_capacity(s.name.len() + 12);
                host.extend_from_slice(s.name);
                host.extend_from_slice(format!("-{i}").as_bytes());
                let d = md5::digest(&host);
                for w in d.chunks_exact(4) {
                    points.push(Point {
                        value: u32::from_le_bytes([w[0], w[1], w[2], w[3]]),
                        server: s.server,
                    });
                }
            }
        }
        points.sort_by_key(|p| p.value);
        Continuum { points }
    }

    pub fn points(&self) -> &[Point] {
        &self.points
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// The server owning `hash`: the first point with value `>= hash`, else the first point.
    pub fn dispatch(&self, hash: u32) -> Option<usize> {
        let i = self.points.partition_point(|p| p.value < hash);
        self.points
            .get(i)
            .or_else(|| self.points.first())
            .map(|p| p.server)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_weights_get_160_points() {
        for n in 1..=20 {
            assert_eq!(points_for(1, n, n), 160, "n={n}");
            assert_eq!(points_for(7, 7 * n, n), 160, "n={n}");
        }
    }

    #[test]
    fn float32_truncation() {
        // 3 servers, weights 1,1,2: pct 0.25 -> 0.25*160/4*3 = 30 -> 120 points; 0.5 -> 240.
        assert_eq!(points_for(1, 4, 3), 120);
        assert_eq!(points_for(2, 4, 3), 240);
        // weights 1 and 2 over 2 servers: 1/3*40*2 = 26.666.. -> 26*4 = 104; 2/3 -> 53*4 = 212.
        assert_eq!(points_for(1, 3, 2), 104);
        assert_eq!(points_for(2, 3, 2), 212);
        // weight 1 of 3 among 3: 1/3 in f32 is 0.33333334, and the product rounds to 40.0.
        assert_eq!(points_for(1, 3, 3), 160);
        assert_eq!(points_for(1, 10, 3), 48);
        // Five servers, total weight 25: 1/25 in f32 makes 7.9999995, so 7*4 = 28 points where
        // double arithmetic gives 32. nutcracker agrees (golden layout D).
        assert_eq!(points_for(1, 25, 5), 28);
        assert_eq!(points_for(8, 25, 5), 252);
        assert_eq!(points_for(10, 25, 5), 320);
    }

    #[test]
    fn points_are_md5_words_little_endian() {
        let ring = Continuum::build(&[RingServer {
            name: b"a",
            weight: 1,
            server: 0,
        }]);
        assert_eq!(ring.points().len(), 160);
        let d = md5::digest(b"a-0");
        let first = u32::from_le_bytes([d[0], d[1], d[2], d[3]]);
        assert!(ring.points().iter().any(|p| p.value == first));
        assert!(ring.points().windows(2).all(|w| w[0].value <= w[1].value));
    }

    #[test]
    fn dispatch_finds_first_point_at_or_above_and_wraps() {
        let ring = Continuum {
            points: vec![
                Point {
                    value: 10,
                    server: 1,
                },
                Point {
                    value: 20,
                    server: 2,
                },
                Point {
                    value: 30,
                    server: 3,
                },
            ],
        };
        assert_eq!(ring.dispatch(0), Some(1));
        assert_eq!(ring.dispatch(10), Some(1));
        assert_eq!(ring.dispatch(11), Some(2));
        assert_eq!(ring.dispatch(30), Some(3));
        assert_eq!(ring.dispatch(31), Some(1));
        assert_eq!(ring.dispatch(u32::MAX), Some(1));
        assert_eq!(Continuum::default().dispatch(5), None);
    }
}
