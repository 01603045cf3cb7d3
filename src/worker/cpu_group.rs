//! The workers pinned to one CPU, run by one thread.
//!
//! When `workers` is above the CPU count, several workers are pinned to each CPU. As threads
//! of their own they could only take turns on it, and every turn would cost a context
//! switch; worse, a worker that blocks in epoll_wait has to be woken by whoever delivers its
//! next packet, usually from another CPU: a cross-CPU wake-up that costs that CPU more than
//! the packet itself (docs/benchmarks.md: with 2 worker threads on one CPU, the wake-ups took
//! 10% of the client's CPU under wrk keep-alive, 6.5% for HAProxy). So the workers of one CPU
//! share one thread: each keeps its own epoll, listening sockets, connections and metrics,
//! exactly as a worker alone on a thread, and the thread blocks in one more epoll that holds
//! the workers' epoll descriptors (an epoll is readable while events wait in it). It wakes
//! once for whatever is ready, and runs a turn of each worker that has events, a timer due or
//! work left over, polling that worker's epoll without blocking.
//!
//! Hot path: one wait per pass and one non-blocking poll per worker that is ready; no lock,
//! no allocation. Invariants: a worker runs a turn only on this thread, so its state stays
//! single-threaded; `ready` is set for a worker whose epoll the group's epoll reported, or
//! whose last poll filled the event buffer (the rest waits in its epoll, which the group's
//! epoll, being edge-triggered, would not report again); a worker that stops is finished and
//! dropped here, which closes its epoll and so removes it from the group's.

use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use super::{Worker, EVENTS_CAPACITY};

/// What one worker thread runs: a worker alone, or the workers pinned to its CPU.
#[derive(Debug)]
pub enum WorkerThread {
    Alone(Box<Worker>),
    Group(CpuGroup),
}

impl WorkerThread {
    /// Built on the main thread, so that a failure surfaces at start-up.
    pub fn new(mut workers: Vec<Worker>) -> io::Result<WorkerThread> {
        if workers.len() == 1 {
            if let Some(worker) = workers.pop() {
                return Ok(WorkerThread::Alone(Box::new(worker)));
            }
        }
        CpuGroup::new(workers).map(WorkerThread::Group)
    }

    pub fn run(self) {
        match self {
            WorkerThread::Alone(worker) => worker.run(),
            WorkerThread::Group(group) => group.run(),
        }
    }
}

#[derive(Debug)]
struct Member {
    /// `None` once the worker has stopped.
    worker: Option<Worker>,
    /// Events (may) wait in its epoll.
    ready: bool,
    /// When its next timer is due (`None`: no timer).
    due: Option<Instant>,
}

/// Several workers and the epoll that watches theirs.
#[derive(Debug)]
pub struct CpuGroup {
    poll: Poll,
    members: Vec<Member>,
}

impl CpuGroup {
    fn new(workers: Vec<Worker>) -> io::Result<CpuGroup> {
        let poll = Poll::new()?;
        for (i, worker) in workers.iter().enumerate() {
            let fd: RawFd = worker.poll_fd();
            poll.registry()
                .register(&mut SourceFd(&fd), Token(i), Interest::READABLE)?;
        }
        let members = workers
            .into_iter()
            .map(|worker| Member {
                worker: Some(worker),
                // Each runs a first turn, as a worker on its own thread would.
                ready: true,
                due: None,
            })
            .collect();
        Ok(CpuGroup { poll, members })
    }

    /// Run until every worker has stopped.
    pub fn run(mut self) {
        let mut events = Events::with_capacity(EVENTS_CAPACITY);
        let mut group_events = Events::with_capacity(self.members.len());
        loop {
            let now = Instant::now();
            let mut timeout: Option<Duration> = None;
            let mut live = 0;
            for member in &mut self.members {
                let Some(worker) = member.worker.as_mut() else {
                    continue;
                };
                if !worker.keep_running() {
                    if let Some(worker) = member.worker.take() {
                        worker.finish();
                    }
                    continue;
                }
                live += 1;
                if member.ready || member.due.is_some_and(|due| due <= now) {
                    member.ready = false;
                    if worker.poll_events(&mut events, Some(Duration::ZERO)) {
                        member.ready = worker.turn(&events) >= EVENTS_CAPACITY;
                    }
                    // Its timers change only in its own turns (commands come with a wake-up).
                    member.due = worker.poll_timeout().map(|wait| Instant::now() + wait);
                }
                if member.ready {
                    timeout = Some(Duration::ZERO);
                } else if let Some(due) = member.due {
                    let wait = due.saturating_duration_since(now);
                    timeout = Some(timeout.map_or(wait, |t| t.min(wait)));
                }
            }
            if live == 0 {
                return;
            }
            match self.poll.poll(&mut group_events, timeout) {
                Ok(()) => {
                    for event in group_events.iter() {
                        if let Some(member) = self.members.get_mut(event.token().0) {
                            member.ready = true;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::error!("worker group: poll failed: {e}");
                    // Run every worker's turn anyway, after a pause so that this cannot spin.
                    std::thread::sleep(Duration::from_millis(10));
                    for member in &mut self.members {
                        member.ready = true;
                    }
                }
            }
        }
    }
}
