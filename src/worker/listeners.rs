//! A worker's listener set: registering a listener's socket (at start and when a reload adds
//! one), the reload commands from the control thread (add, replace, remove a listener), and
//! closing every listening socket at drain.
//!
//! Not on the hot path: runs at start, on the control thread's wake-up and once at drain.
//! Invariants: a listener keeps its index, and so its token (`listener_token`), for the life
//! of the worker, since connections refer to it by index: a removed one stays in the vector,
//! `retired` and without a socket, so that its connections can finish; once none is left in
//! any worker it becomes `vacant` (its backends and tables freed) and the next added listener
//! takes its index; a replaced one keeps its socket; UDP sessions close with their listener's socket (no reply could leave).

use std::io;
use std::sync::Arc;

use mio::Interest;

use crate::balancer::Selector;
use crate::state::ListenerState;

use super::{listener_token, tagged, ListenerSocket, Worker, WorkerCommand, WorkerListener};

/// After a takeover, how long the old process's UDP sessions keep relaying backend replies to
/// requests they forwarded before the switch. New client datagrams go to the new process, so
/// only answers already on their way arrive here; 2 s covers any backend that answers at all
/// in a request/response protocol (and `drain_timeout_s` still bounds it).
const UDP_HANDOVER_GRACE_MS: u64 = 2_000;

impl Worker {
    pub(super) fn add_listener(
        &mut self,
        state: Arc<ListenerState>,
        mut socket: Option<ListenerSocket>,
    ) -> io::Result<()> {
        // A vacant slot is reused: a reload loop keeps the vector (and the token range) flat.
        let index = self
            .listeners
            .iter()
            .position(|l| l.vacant)
            .unwrap_or(self.listeners.len());
        let registry = &self.registry;
        let token = tagged(self.tag, listener_token(index));
        match &mut socket {
            Some(ListenerSocket::Tcp(s)) => registry.register(s, token, Interest::READABLE)?,
            Some(ListenerSocket::Udp(s)) => registry.register(s, token, Interest::READABLE)?,
            None => {}
        }
        let bind = state.config.bind;
        let listener = WorkerListener {
            socket,
            retired: false,
            vacant: false,
            selector: Selector::new(self.id as u64),
            paused_until: None,
            local: (!bind.ip().is_unspecified()).then_some(bind),
            next_source: 0,
            on_ring: false,
            ring_armed: false,
            state,
        };
        self.udp.listeners_changed = true;
        match self.listeners.get_mut(index) {
            Some(slot) => *slot = listener,
            None => self.listeners.push(listener),
        }
        Ok(())
    }

    pub(super) fn apply_commands(&mut self) {
        while let Ok(command) = self.commands.try_recv() {
            log::debug!("worker {}: {command:?}", self.id);
            match command {
                WorkerCommand::AddListener(state, socket) => {
                    let name = state.config.name.clone();
                    if let Err(e) = self.add_listener(state, socket) {
                        log::error!("worker {}: cannot add listener {name}: {e}", self.id);
                    }
                }
                WorkerCommand::ReplaceListener(state) => {
                    // A worker may hold several sockets of one listener (inherited by a
                    // takeover from a process with more workers): each entry gets the state.
                    for l in self
                        .listeners
                        .iter_mut()
                        .filter(|l| !l.retired && l.state.config.name == state.config.name)
                    {
                        l.state = state.clone();
                    }
                }
                WorkerCommand::RemoveListener(name) => {
                    for li in 0..self.listeners.len() {
                        let l = &mut self.listeners[li];
                        if l.retired || l.state.config.name != name {
                            continue;
                        }
                        l.retired = true;
                        l.paused_until = None;
                        self.retiring += 1;
                        // UDP sessions cannot answer without the socket: they close now.
                        self.udp_ring_release_listener(li);
                        let l = &mut self.listeners[li];
                        if matches!(l.socket.take(), Some(ListenerSocket::Udp(_))) {
                            self.udp_close_sessions(Some(li));
                        }
                    }
                    self.sweep_retired();
                }
            }
        }
    }

    /// Free what retired listeners hold (backends, Maglev tables, client tables) once their
    /// last connection or session has ended in every worker (issue 10, bug 7): the slot keeps
    /// an emptied state and becomes vacant, for the next added listener to take.
    pub(super) fn sweep_retired(&mut self) {
        for l in &mut self.listeners {
            if l.retired && !l.vacant && l.state.is_idle() {
                l.state = Arc::new(l.state.emptied());
                l.selector = Selector::new(self.id as u64);
                l.vacant = true;
                self.retiring -= 1;
                log::debug!(
                    "worker {}: retired listener {} freed",
                    self.id,
                    l.state.config.name
                );
            }
        }
    }

    /// Close every listening socket: new connections are refused by the kernel from now on.
    /// UDP sessions are dropped at once: they have no connection to finish, and replies could
    /// no longer leave through the closed listener sockets.
    ///
    /// After a takeover the sockets live on in the new process, which now reads them: TCP
    /// listeners are only let go (their queues stay open), and UDP sockets are kept, out of
    /// this loop's `Poll`, so that the replies to requests already forwarded can still leave
    /// (`udp_handover_done` says when to stop waiting for them).
    pub(super) fn stop_accepting(&mut self) {
        self.udp_ring_release_listeners();
        let handed_over = self.shared.is_handed_over();
        let registry = &self.registry;
        for l in &mut self.listeners {
            l.paused_until = None;
            // Deregister explicitly: epoll forgets a descriptor on close only once no process
            // holds the socket, and after a takeover the new one does.
            match l.socket.take() {
                Some(ListenerSocket::Udp(mut s)) => {
                    let _ = registry.deregister(&mut s);
                    if handed_over {
                        l.socket = Some(ListenerSocket::Udp(s));
                    }
                }
                Some(ListenerSocket::Tcp(mut s)) => {
                    let _ = registry.deregister(&mut s);
                }
                None => {}
            }
        }
        if !handed_over {
            self.udp_close_sessions(None);
        }
    }

    /// Whether the UDP sessions left after a takeover are done: none left, or their grace
    /// period since `since` is over.
    pub(super) fn udp_handover_done(&self, since: u64) -> bool {
        self.udp.sessions() == 0 || self.now >= since + UDP_HANDOVER_GRACE_MS
    }
}
