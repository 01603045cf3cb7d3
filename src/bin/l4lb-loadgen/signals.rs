//! SIGINT/SIGTERM -> a stop flag, without `unsafe` and without a signal-handler crate.
//!
//! Control path. `install` must run on the main thread before any other thread is spawned:
//! it blocks the two signals (the mask is inherited by every thread spawned afterwards) and
//! starts one thread that waits for them with `sigwait`. The first signal sets the flag and
//! wakes the caller through the returned channel, so runs end early with a full summary; a
//! second signal exits at once with status 130.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_channel::{bounded, Receiver};
use nix::sys::signal::{SigSet, Signal};

/// Blocks SIGINT and SIGTERM and starts the waiter. When blocking fails, the signals keep
/// their default action (the process dies without a summary) and the channel never fires.
pub fn install(stop: Arc<AtomicBool>) -> Receiver<Signal> {
    let (tx, rx) = bounded(1);
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    if let Err(e) = set.thread_block() {
        log::warn!(
            "cannot block SIGINT/SIGTERM ({e}); a signal will end the run without a summary"
        );
        return rx;
    }
    let waited = set;
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut seen = 0u32;
            loop {
                match waited.wait() {
                    Ok(sig) => {
                        seen += 1;
                        if seen > 1 {
                            std::process::exit(130);
                        }
                        stop.store(true, Ordering::SeqCst);
                        let _ = tx.try_send(sig);
                    }
                    Err(e) => {
                        log::warn!("sigwait failed: {e}");
                        return;
                    }
                }
            }
        });
    if let Err(e) = spawned {
        log::warn!("cannot start the signal thread: {e}");
        let _ = set.thread_unblock();
    }
    rx
}
