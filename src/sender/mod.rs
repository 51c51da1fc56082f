//! `mailfleet sender run`: the one process of the sender image. It owns
//! Postfix in the same container, so nothing needs a shared process
//! namespace:
//!
//! 1. writes the base settings the pod needs into Postfix's own main.cf and
//!    master.cf ([`base`]: the delivery log, listening on the pod's
//!    addresses, no chroot, the `postlog` service), then the mounted sender
//!    configuration, and the relay password map from the mounted Secrets
//!    ([`relay_login`]);
//! 2. checks that a `Bind` address is on one of the pod's interfaces
//!    ([`bind`]), after each configuration and every minute, and reports it
//!    to the feedback endpoint (the IP's `IpBound` condition; its routes
//!    leave the IP while it is `False`) instead of failing every delivery;
//! 3. runs `postfix start-fg` as its child, and the agent's loop
//!    ([`crate::agent::run`]) beside it: following the log Postfix writes,
//!    reporting, and applying new configurations (postmap + reload) in this
//!    container;
//! 4. on SIGTERM hands its queue to the pool's other senders ([`drain`],
//!    with `--drain-to`), stops Postfix (`postfix stop`), lets
//!    the agent read the last lines and send its last report, and exits; when
//!    Postfix dies on its own, it stops the agent and exits non-zero so the
//!    kubelet restarts the container.

pub mod base;
pub mod bind;
pub mod drain;
pub mod relay_login;
pub mod run;
