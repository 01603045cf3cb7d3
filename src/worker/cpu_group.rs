//! The workers pinned to one CPU, run by one thread on one epoll.
//!
//! When `workers` is above the CPU count, several workers are pinned to each CPU. As threads
//! of their own they could only take turns on it, and every turn would cost a context
//! switch; worse, a worker that blocks in epoll_wait has to be woken by whoever delivers its
//! next packet, usually from another CPU: a cross-CPU wake-up that costs that CPU more than
//! the packet itself (docs/benchmarks.md: with 2 worker threads on one CPU, the wake-ups took
//! 10% of the client's CPU under wrk keep-alive, 6.5% for HAProxy). So the workers of one CPU
//! share one thread and one epoll: each keeps its own listening sockets, connections, timers
//! and metrics, exactly as a worker alone on a thread, and registers its sockets in the
//! shared epoll with its index in the token's top bits (`MEMBER_SHIFT`). One epoll_wait
//! serves them all; each worker with events, a timer due or work left over then runs its turn
//! over the events that carry its index.
//!
//! Hot path: one wait per pass, a turn per worker that has something to do; no lock, no
//! allocation. Invariants: a worker runs a turn only on this thread, so its state stays
//! single-threaded; a worker that stops is finished and dropped here, and its sockets close
//! with it (which takes them out of the epoll); at most `MAX_MEMBERS` workers share an epoll.

use std::time::Instant;

use mio::Poll;

use super::waiter::Waiter;
use super::{Worker, MEMBER_SHIFT};

/// What one worker thread runs: a worker alone, or the workers pinned to its CPU. Each comes
/// with the epoll its workers were built on (`WorkerSetup::registry`).
#[derive(Debug)]
pub enum WorkerThread {
    Alone(Poll, Box<Worker>),
    Group(CpuGroup),
}

impl WorkerThread {
    /// `workers[i]` must have been built with member index `i` on `poll`'s registry.
    pub fn new(poll: Poll, mut workers: Vec<Worker>) -> WorkerThread {
        if workers.len() == 1 {
            if let Some(worker) = workers.pop() {
                return WorkerThread::Alone(poll, Box::new(worker));
            }
        }
        WorkerThread::Group(CpuGroup::new(poll, workers))
    }

    pub fn run(self) {
        match self {
            WorkerThread::Alone(poll, worker) => worker.run(poll),
            WorkerThread::Group(group) => group.run(),
        }
    }
}

#[derive(Debug)]
struct Member {
    /// `None` once the worker has stopped.
    worker: Option<Worker>,
    /// When its next timer is due, or now when it has work left over (`None`: no timer, or
    /// stopped).
    due: Option<Instant>,
}

/// Several workers on one epoll.
#[derive(Debug)]
pub struct CpuGroup {
    poll: Poll,
    members: Vec<Member>,
    /// Per member: whether the last wait brought it events.
    has_events: Vec<bool>,
}

impl CpuGroup {
    fn new(poll: Poll, workers: Vec<Worker>) -> CpuGroup {
        let members: Vec<Member> = workers
            .into_iter()
            .map(|worker| Member {
                worker: Some(worker),
                // Each runs a first turn, as a worker on its own thread would.
                due: Some(Instant::now()),
            })
            .collect();
        let has_events = vec![false; members.len()];
        CpuGroup {
            poll,
            members,
            has_events,
        }
    }

    /// Run until every worker has stopped.
    pub fn run(self) {
        let CpuGroup {
            poll,
            mut members,
            mut has_events,
        } = self;
        let udp = members
            .iter()
            .any(|m| m.worker.as_ref().is_some_and(|w| w.serves_udp()));
        let mut waiter = Waiter::new(poll, "worker thread", udp);
        for m in members.iter_mut() {
            if let Some(w) = m.worker.as_mut() {
                w.udp.on_ring = waiter.has_ring();
            }
        }
        // Before the first wait: nothing happened yet.
        let mut waited = false;
        loop {
            has_events.iter_mut().for_each(|h| *h = false);
            if waited {
                let woken = waiter.woken();
                for event in woken.iter() {
                    if let Some(h) = has_events.get_mut(event.token().0 >> MEMBER_SHIFT) {
                        *h = true;
                    }
                }
                for c in woken.completions {
                    if let Some(h) = has_events.get_mut((c.user_data >> MEMBER_SHIFT) as usize) {
                        *h = true;
                    }
                }
            }
            let now = Instant::now();
            let mut live = 0;
            for (member, &has_events) in members.iter_mut().zip(&has_events) {
                let Some(worker) = member.worker.as_mut() else {
                    continue;
                };
                if !worker.keep_running() {
                    if let Some(worker) = member.worker.take() {
                        worker.finish(&mut waiter);
                    }
                    member.due = None;
                    continue;
                }
                live += 1;
                if has_events || member.due.is_some_and(|due| due <= now) {
                    if waited {
                        worker.turn(&waiter.woken());
                    } else {
                        worker.turn(&Default::default());
                    }
                    // Its timers change only in its own turns (commands come with a wake-up).
                    member.due = worker.poll_timeout().map(|wait| Instant::now() + wait);
                }
            }
            // Sends first: they keep their buffers from being given back.
            for member in members.iter_mut() {
                if let Some(worker) = member.worker.as_mut() {
                    waiter.after_turns(&mut worker.udp.ops);
                }
            }
            waiter.release_buffers();
            if live == 0 {
                return;
            }
            // From the time after the turns: a worker with work left over (due now) must not
            // wait for the turns' length, which the epoll would round up to a millisecond.
            let after = Instant::now();
            let timeout = members
                .iter()
                .filter_map(|m| m.due)
                .map(|due| due.saturating_duration_since(after))
                .min();
            // A failed wait leaves no events: the next pass runs only what is due.
            waited = waiter.wait(timeout);
            // The requests naming these sockets are in the kernel now.
            for member in members.iter_mut() {
                if let Some(worker) = member.worker.as_mut() {
                    worker.udp.closing.clear();
                }
            }
        }
    }
}
