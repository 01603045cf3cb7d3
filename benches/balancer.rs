//! Criterion benches of the hot primitives: `Selector::pick` for every algorithm at 3, 16 and
//! 256 backends (ns per pick), and the control-path Maglev table build at 10 and 1,000
//! backends (plus a rebuild after one backend goes down, which adds the rendezvous
//! reassignment).
//!
//! Before benchmarking, `main` checks that no pick allocates (a counting global allocator):
//! the hot path must stay allocation-free, and a bench that silently measured `malloc` would
//! hide a regression.
//!
//! Run: `cargo bench --bench balancer` (add `-- --quick` for a fast pass).

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use criterion::{criterion_group, BenchmarkId, Criterion};
use l4lb::backend::{Backend, BackendState};
use l4lb::balancer::{maglev, Algorithm, FlowKey, Pool, Selector};

/// Counts allocations so `main` can prove picks do not allocate.
struct CountingAlloc;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the
// `GlobalAlloc` contract is exactly `System`'s; the counter is a relaxed atomic with no effect
// on the memory handed out.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as our caller's (see the impl comment).
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through `alloc`/`realloc` above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as for `dealloc`; `new_size` is forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

const SIZES: [usize; 3] = [3, 16, 256];

/// `n` backends with weights 1..=4 and a spread of active counts, so least_conn and friends
/// compare real numbers instead of short-cutting on an idle backend.
fn backends(n: usize) -> Vec<Arc<Backend>> {
    (0..n)
        .map(|i| {
            let name = format!("10.0.{}.{}:80", i / 250, i % 250 + 1);
            let addr: SocketAddr = name.parse().expect("bench address");
            let b = Backend::new(addr, name, (i % 4) as u32 + 1, 0, false);
            b.active.store(((i * 7) % 13 + 1) as u32, Ordering::Relaxed);
            Arc::new(b)
        })
        .collect()
}

/// 1,024 distinct flows (a power of two so the index wraps with a mask).
fn keys() -> Vec<FlowKey> {
    (0..1024u32)
        .map(|i| FlowKey {
            client: SocketAddr::new(
                Ipv4Addr::from(0x0a00_0000u32.wrapping_add(i.wrapping_mul(2_654_435_761))).into(),
                40_000,
            ),
            local: "192.0.2.1:80".parse().expect("bench address"),
            protocol: 6,
        })
        .collect()
}

fn bench_pick(c: &mut Criterion) {
    let keys = keys();
    let mut group = c.benchmark_group("pick");
    for alg in Algorithm::ALL {
        for n in SIZES {
            let pool = Pool::new(alg, backends(n));
            let mut sel = Selector::new(1);
            let mut k = 0usize;
            group.bench_with_input(BenchmarkId::new(alg.as_str(), n), &n, |b, _| {
                b.iter(|| {
                    k = (k + 1) & 1023;
                    black_box(sel.pick(black_box(&pool), &keys[k], &[]))
                })
            });
        }
    }
    group.finish();
}

fn bench_maglev_build(c: &mut Criterion) {
    let mut group = c.benchmark_group("maglev_build");
    group.sample_size(10);
    for n in [10, 1000] {
        let names: Vec<String> = (0..n)
            .map(|i| format!("10.0.{}.{}:80", i / 250, i % 250 + 1))
            .collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let weights: Vec<u32> = (0..n).map(|i| (i % 4) as u32 + 1).collect();
        group.bench_with_input(BenchmarkId::new("build", n), &n, |b, _| {
            b.iter(|| maglev::build(black_box(&refs), &weights, maglev::DEFAULT_TABLE_SIZE))
        });
        // Pool::rebuilt with one backend down: reuses the base table, reassigns its slots.
        let pool = Pool::new(Algorithm::SourceIpHash, backends(n));
        pool.backends()[n / 2].set_state(BackendState::Down);
        group.bench_with_input(BenchmarkId::new("rebuilt_one_down", n), &n, |b, _| {
            b.iter(|| black_box(pool.rebuilt()))
        });
    }
    group.finish();
}

/// Panics if any pick allocates (after the first pick of a pool generation, which may size
/// the selector's state).
fn assert_picks_do_not_allocate() {
    let keys = keys();
    for alg in Algorithm::ALL {
        for n in SIZES {
            let pool = Pool::new(alg, backends(n));
            pool.backends()[0].set_state(BackendState::Down);
            let mut sel = Selector::new(0);
            let _ = sel.pick(&pool, &keys[0], &[]);
            let before = ALLOCATIONS.load(Ordering::Relaxed);
            for (i, key) in keys.iter().enumerate() {
                black_box(sel.pick(&pool, key, &[(i % n) as u16]));
            }
            let allocated = ALLOCATIONS.load(Ordering::Relaxed) - before;
            assert_eq!(allocated, 0, "{alg} with {n} backends allocated in pick");
        }
    }
}

criterion_group!(benches, bench_pick, bench_maglev_build, bench_limiter);

fn main() {
    assert_picks_do_not_allocate();
    benches();
    Criterion::default().configure_from_args().final_summary();
}

// ------------------------------------------------------------------------------------------
// Limiter benches (`crate::limits`) go below this line, written separately: define their
// functions here and add them to `criterion_group!(benches, ...)` above.
// ------------------------------------------------------------------------------------------

/// The per-client limiter on the accept path: one acquire + release of a concurrent-connection
/// slot, and one token-bucket take, spread over 1,024 client IPs.
fn bench_limiter(c: &mut Criterion) {
    use l4lb::limits::{ClientKeys, ClientTable, RateTable};
    use std::net::{IpAddr, Ipv4Addr};
    let ips: Vec<IpAddr> = (0..1024u32)
        .map(|i| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | i)))
        .collect();
    let mut group = c.benchmark_group("limiter");
    let table = ClientTable::new(100_000, ClientKeys::new(32, 64));
    let mut i = 0;
    group.bench_function("client_cap_acquire_release", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            if let Ok(slot) = table.acquire(black_box(ips[i]), 100) {
                table.release(slot);
            }
        })
    });
    let rates = RateTable::new(100_000, 1_000_000, ClientKeys::new(32, 64));
    let mut now = 0u64;
    group.bench_function("client_rate_take", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            now += 1;
            black_box(rates.try_acquire(black_box(ips[i]), now / 1024))
        })
    });
    group.finish();
}
