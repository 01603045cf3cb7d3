//! Dropping root (`runtime.user`): once every socket is bound, a process started as root takes
//! the user's uid, its primary gid and no supplementary groups, in the only safe order
//! (setgroups, setgid, setuid: after setuid the others are no longer allowed). Started as
//! another user, the key does nothing (systemd's `User=` already chose the user).
//!
//! Control path, once at start, before any worker thread exists. Invariants: any step that
//! fails stops the start (exit 1), and success is checked by reading the ids back, so the
//! process never serves with more privilege than configured.

use nix::unistd::{getegid, geteuid, getgid, getuid, setgid, setgroups, setuid, Gid, Uid, User};

/// A resolved `runtime.user`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("runtime.user: no user {0:?} on this system")]
    NoSuchUser(String),
    #[error("runtime.user: cannot look up {user:?}: {source}")]
    Lookup {
        user: String,
        source: nix::errno::Errno,
    },
    #[error("runtime.user: {step} failed while dropping root to {user:?}: {source}")]
    Step {
        user: String,
        step: &'static str,
        source: nix::errno::Errno,
    },
    #[error(
        "runtime.user: still running with uid {uid}/gid {gid} after dropping root to {user:?}"
    )]
    NotDropped { user: String, uid: u32, gid: u32 },
}

/// The user to become, if this process runs as root and `user` is set; `None` otherwise.
pub fn resolve(user: Option<&str>) -> Result<Option<Target>, PrivilegeError> {
    let Some(name) = user else {
        return Ok(None);
    };
    if !geteuid().is_root() {
        log::info!(
            "runtime.user = {name:?}: not started as root (uid {}), running as is",
            geteuid()
        );
        return Ok(None);
    }
    match User::from_name(name) {
        Ok(Some(u)) => Ok(Some(Target {
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
        })),
        Ok(None) => Err(PrivilegeError::NoSuchUser(name.to_string())),
        Err(source) => Err(PrivilegeError::Lookup {
            user: name.to_string(),
            source,
        }),
    }
}

/// Become `target`: supplementary groups, then gid, then uid.
pub fn drop_to(user: &str, target: Target) -> Result<(), PrivilegeError> {
    let step = |step: &'static str| {
        move |source| PrivilegeError::Step {
            user: user.to_string(),
            step,
            source,
        }
    };
    let gid = Gid::from_raw(target.gid);
    setgroups(&[gid]).map_err(step("setgroups"))?;
    setgid(gid).map_err(step("setgid"))?;
    setuid(Uid::from_raw(target.uid)).map_err(step("setuid"))?;
    let ids = [getuid(), geteuid()].map(Uid::as_raw);
    let gids = [getgid(), getegid()].map(Gid::as_raw);
    if ids != [target.uid; 2]
        || gids != [target.gid; 2]
        || (target.uid != 0 && setuid(Uid::from_raw(0)).is_ok())
    {
        return Err(PrivilegeError::NotDropped {
            user: user.to_string(),
            uid: geteuid().as_raw(),
            gid: getegid().as_raw(),
        });
    }
    log::info!(
        "dropped root: running as {user:?} (uid {}, gid {})",
        target.uid,
        target.gid
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_user_means_no_change() {
        assert_eq!(resolve(None).unwrap(), None);
    }

    #[test]
    fn an_unknown_user_is_an_error_for_root_and_ignored_otherwise() {
        let r = resolve(Some("no-such-user-l4lb-test"));
        if geteuid().is_root() {
            assert!(matches!(r, Err(PrivilegeError::NoSuchUser(_))), "{r:?}");
        } else {
            assert_eq!(r.unwrap(), None);
        }
    }
}
