//! Workers pinned to one CPU hand it to each other instead of sleeping.
//!
//! When `workers` is above the CPU count, several workers are pinned to each CPU. A worker
//! that blocks in epoll_wait has to be woken by whoever delivers its next packet, usually on
//! another CPU: a cross-CPU wake-up that costs that CPU more than the packet itself (measured
//! in docs/benchmarks.md: with 2 workers on one CPU, the wake-ups took 10% of the client's
//! CPU under wrk keep-alive, 6.5% for HAProxy). A worker with nothing ready whose core mate
//! is awake therefore yields the CPU to it and looks again without blocking: it stays off the
//! epoll's wait queue, so nobody has to wake it, and the CPU does the mate's work meanwhile.
//! Only the last awake worker of a CPU blocks. A worker alone on its CPU (the default, one
//! worker per CPU) or unpinned has no mates and waits as before.
//!
//! Hot path: once per loop turn that found nothing ready; atomics only, no lock, no
//! allocation. Invariant: `awake` counts the group's workers that are not blocked in
//! epoll_wait and have not stopped; a worker gives its count back before it blocks and when
//! it stops, and takes it again when it wakes. The hand-offs per wait are bounded, so a mate
//! that is awake but not runnable (blocked elsewhere) costs at most `MAX_HANDOFFS` yields.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Yields before a worker blocks anyway: bounds what an awake mate that does not run costs.
pub const MAX_HANDOFFS: usize = 64;

/// The workers pinned to one CPU.
#[derive(Debug)]
pub struct CoreMates {
    awake: AtomicUsize,
}

impl CoreMates {
    /// Whether a worker other than the caller (who is awake) is awake.
    pub fn others_awake(&self) -> bool {
        self.awake.load(Ordering::Relaxed) > 1
    }

    /// The caller is about to block, or has stopped.
    pub fn sleeping(&self) {
        self.awake.fetch_sub(1, Ordering::Relaxed);
    }

    /// The caller is awake again.
    pub fn woke(&self) {
        self.awake.fetch_add(1, Ordering::Relaxed);
    }
}

/// For each worker, given the CPU it is pinned to (`None`: not pinned), the group of workers
/// pinned to the same CPU when there are at least two of them.
pub fn groups(cpus: &[Option<usize>]) -> Vec<Option<Arc<CoreMates>>> {
    let mut made: Vec<(usize, Arc<CoreMates>)> = Vec::new();
    cpus.iter()
        .map(|&cpu| {
            let cpu = cpu?;
            if let Some((_, group)) = made.iter().find(|(c, _)| *c == cpu) {
                return Some(group.clone());
            }
            let size = cpus.iter().filter(|&&c| c == Some(cpu)).count();
            if size < 2 {
                return None;
            }
            // Every worker starts awake.
            let group = Arc::new(CoreMates {
                awake: AtomicUsize::new(size),
            });
            made.push((cpu, group.clone()));
            Some(group)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_workers_that_share_a_cpu_are_mates() {
        let g = groups(&[Some(1), Some(2), Some(1), None, Some(3), Some(1)]);
        assert!(g[1].is_none() && g[3].is_none() && g[4].is_none());
        let (a, b, c) = (g[0].as_ref().unwrap(), g[2].as_ref().unwrap(), &g[5]);
        assert!(Arc::ptr_eq(a, b) && Arc::ptr_eq(a, c.as_ref().unwrap()));
        assert_eq!(a.awake.load(Ordering::Relaxed), 3);
        assert!(groups(&[Some(0), Some(1)]).iter().all(Option::is_none));
        assert!(groups(&[None, None]).iter().all(Option::is_none));
    }

    #[test]
    fn the_last_awake_worker_sees_no_mate_awake() {
        let g = groups(&[Some(0), Some(0)]);
        let mates = g[0].as_ref().unwrap();
        assert!(mates.others_awake());
        mates.sleeping();
        assert!(!mates.others_awake());
        mates.woke();
        assert!(mates.others_awake());
    }
}
