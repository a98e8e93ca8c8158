//! What the link knows about one connection, with no I/O and time passed in: which sent
//! messages the server has confirmed ([`Window`]) and whether the peer is still there
//! ([`Liveness`]).
//!
//! Confirmation depends on the framing:
//! - typed: the server acks each `{"type":"data"}` message in order (`{"type":"ack"}`, or
//!   `{"type":"error"}` for one it refused), so each reply confirms the oldest message sent;
//! - bare: the server says nothing, so after sending the link sends a ping; a WebSocket
//!   server answers a ping only after it has read every frame before it, so its pong
//!   confirms every message sent before that ping. Without this a message written into the
//!   socket just before the peer vanished would be lost unnoticed.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use edgeshare_shared::backend::depin::{Framing, ServerMessage};
use edgeshare_shared::retry::Backoff;

/// What a server reply meant for the messages in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Every message up to this seq is delivered.
    Confirmed(u64),
    /// The server refused the message with this seq (and read it: it is not sent again).
    Refused { seq: u64, error: String },
    /// A refusal that cannot be tied to a message (bare framing).
    Error(String),
    /// Nothing to do (a pong for a keepalive ping, an unknown message).
    Nothing,
}

/// Messages sent on one connection and not yet confirmed.
#[derive(Debug)]
pub struct Window {
    framing: Framing,
    max_in_flight: usize,
    in_flight: VecDeque<u64>,
    /// Pings sent and not answered: (id, highest seq sent before it).
    pings: VecDeque<(u64, Option<u64>)>,
    next_ping: u64,
}

impl Window {
    pub fn new(framing: Framing, max_in_flight: usize) -> Self {
        Window {
            framing,
            max_in_flight: max_in_flight.max(1),
            in_flight: VecDeque::new(),
            pings: VecDeque::new(),
            next_ping: 1,
        }
    }

    /// How many more messages may be sent now.
    pub fn room(&self) -> usize {
        self.max_in_flight.saturating_sub(self.in_flight.len())
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    pub fn sent(&mut self, seq: u64) {
        self.in_flight.push_back(seq);
    }

    /// Bare framing: messages are waiting for a ping to confirm them and none is out.
    pub fn wants_ping(&self) -> bool {
        self.framing == Framing::Bare && !self.in_flight.is_empty() && self.pings.is_empty()
    }

    /// Records a ping about to be sent; returns its payload.
    pub fn ping(&mut self) -> [u8; 8] {
        let id = self.next_ping;
        self.next_ping += 1;
        self.pings.push_back((id, self.in_flight.back().copied()));
        id.to_be_bytes()
    }

    /// A pong arrived with `payload`.
    pub fn on_pong(&mut self, payload: &[u8]) -> Reply {
        let Ok(bytes) = <[u8; 8]>::try_from(payload) else {
            return Reply::Nothing;
        };
        let id = u64::from_be_bytes(bytes);
        let mut covered = None;
        while let Some(&(ping, seq)) = self.pings.front() {
            if ping > id {
                break;
            }
            self.pings.pop_front();
            covered = covered.max(seq);
        }
        match (self.framing, covered) {
            (Framing::Bare, Some(seq)) => self.confirm_through(seq),
            _ => Reply::Nothing,
        }
    }

    fn confirm_through(&mut self, seq: u64) -> Reply {
        let mut confirmed = None;
        while self.in_flight.front().is_some_and(|&s| s <= seq) {
            confirmed = self.in_flight.pop_front();
        }
        confirmed.map_or(Reply::Nothing, Reply::Confirmed)
    }

    /// A text message from the server.
    pub fn on_message(&mut self, message: Option<ServerMessage>) -> Reply {
        match (self.framing, message) {
            (Framing::Typed, Some(ServerMessage::Ack { .. })) => self
                .in_flight
                .pop_front()
                .map_or(Reply::Nothing, Reply::Confirmed),
            (Framing::Typed, Some(ServerMessage::Error { error })) => {
                match self.in_flight.pop_front() {
                    Some(seq) => Reply::Refused { seq, error },
                    None => Reply::Error(error),
                }
            }
            (Framing::Bare, Some(ServerMessage::Error { error })) => Reply::Error(error),
            _ => Reply::Nothing,
        }
    }
}

/// Is the peer still there? Anything received proves it; pings make sure something comes
/// when the stream is quiet.
#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    dead_after: Duration,
    last_rx: Instant,
    last_ping: Instant,
}

impl Liveness {
    pub fn new(dead_after: Duration, now: Instant) -> Self {
        Liveness {
            dead_after,
            last_rx: now,
            last_ping: now,
        }
    }

    /// Pings go out every third of `dead_after`, so a live peer answers twice or more before
    /// it would be declared dead.
    fn ping_every(&self) -> Duration {
        self.dead_after / 3
    }

    pub fn received(&mut self, now: Instant) {
        self.last_rx = self.last_rx.max(now);
    }

    pub fn pinged(&mut self, now: Instant) {
        self.last_ping = now;
    }

    pub fn ping_due(&self, now: Instant) -> bool {
        now >= self.last_ping + self.ping_every()
    }

    pub fn is_dead(&self, now: Instant) -> bool {
        now >= self.last_rx + self.dead_after
    }

    /// How long a write may block before the peer counts as dead.
    pub fn time_left(&self, now: Instant) -> Duration {
        (self.last_rx + self.dead_after).saturating_duration_since(now)
    }

    /// When to look again: the next ping or the death deadline.
    pub fn next_check(&self) -> Instant {
        (self.last_ping + self.ping_every()).min(self.last_rx + self.dead_after)
    }
}

/// When to try again after a connection failed or was lost: jittered exponential backoff,
/// started anew after a connection that was a success.
#[derive(Debug, Clone)]
pub struct Reconnect {
    policy: Backoff,
    attempt: u32,
}

impl Reconnect {
    pub fn new(policy: Backoff) -> Self {
        Reconnect { policy, attempt: 0 }
    }

    /// The wait before the next attempt, given `unit_random` in [0, 1) for the jitter.
    pub fn next_delay(&mut self, unit_random: f64) -> Duration {
        let delay = self.policy.delay(self.attempt, unit_random);
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    /// A connection ended. One that carried messages, or lived `dead_after`, was a
    /// success: back off anew. One the server cut at once does not count, so a flapping
    /// server is not hammered.
    pub fn ended(&mut self, progressed: bool, lived: Duration, dead_after: Duration) {
        if progressed || lived >= dead_after {
            self.attempt = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> Backoff {
        // The agent's default `[stream.backoff]`.
        Backoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(60),
            multiplier: 2.0,
        }
    }

    #[test]
    fn reconnects_back_off_to_the_cap_with_jitter_and_start_anew_after_a_success() {
        let mut r = Reconnect::new(shipped());
        let top: Vec<u128> = (0..10).map(|_| r.next_delay(1.0).as_millis()).collect();
        assert_eq!(
            top,
            [
                500, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000, 60000
            ]
        );
        // Jitter: never less than half, so a whole fleet does not retry in one instant.
        let mut r = Reconnect::new(shipped());
        let bottom: Vec<u128> = (0..3).map(|_| r.next_delay(0.0).as_millis()).collect();
        assert_eq!(bottom, [250, 500, 1000]);
        // Cut at once, nothing carried: keep backing off.
        r.ended(false, Duration::from_millis(10), Duration::from_secs(30));
        assert_eq!(r.next_delay(1.0), Duration::from_secs(4));
        // Carried messages: start anew.
        r.ended(true, Duration::from_millis(10), Duration::from_secs(30));
        assert_eq!(r.next_delay(1.0), Duration::from_millis(500));
        // Lived long enough: start anew too.
        r.next_delay(1.0);
        r.ended(false, Duration::from_secs(30), Duration::from_secs(30));
        assert_eq!(r.next_delay(1.0), Duration::from_millis(500));
    }

    fn ack() -> Option<ServerMessage> {
        ServerMessage::parse(r#"{"type":"ack","subscriberCount":0}"#)
    }

    #[test]
    fn typed_acks_confirm_in_order_and_errors_refuse_one() {
        let mut w = Window::new(Framing::Typed, 3);
        for seq in [5, 6, 7] {
            w.sent(seq);
        }
        assert_eq!(w.room(), 0);
        assert!(!w.wants_ping(), "acks confirm typed messages");
        assert_eq!(w.on_message(ack()), Reply::Confirmed(5));
        let error = ServerMessage::parse(r#"{"type":"error","error":"Missing payload"}"#);
        assert_eq!(
            w.on_message(error),
            Reply::Refused {
                seq: 6,
                error: "Missing payload".into()
            }
        );
        assert_eq!(w.room(), 2);
        // A pong confirms nothing in typed framing.
        let id = w.ping();
        assert_eq!(w.on_pong(&id), Reply::Nothing);
        assert_eq!(w.on_message(ack()), Reply::Confirmed(7));
        assert_eq!(w.on_message(ack()), Reply::Nothing, "a stray ack");
        assert_eq!(w.on_message(ServerMessage::parse("junk")), Reply::Nothing);
    }

    #[test]
    fn bare_messages_are_confirmed_by_the_pong_of_a_later_ping() {
        let mut w = Window::new(Framing::Bare, 10);
        w.sent(1);
        w.sent(2);
        assert!(w.wants_ping());
        let first = w.ping();
        assert!(!w.wants_ping(), "one ping out at a time");
        w.sent(3);
        assert_eq!(w.on_message(ack()), Reply::Nothing, "bare has no acks");
        assert_eq!(w.on_pong(&first), Reply::Confirmed(2));
        assert!(w.wants_ping(), "3 still needs a ping");
        let second = w.ping();
        assert_eq!(w.on_pong(b"garbage"), Reply::Nothing);
        assert_eq!(w.on_pong(&second), Reply::Confirmed(3));
        assert_eq!(w.in_flight(), 0);
        // A keepalive ping with nothing in flight confirms nothing.
        let idle = w.ping();
        assert_eq!(w.on_pong(&idle), Reply::Nothing);
    }

    #[test]
    fn a_lost_pong_is_covered_by_a_later_one() {
        let mut w = Window::new(Framing::Bare, 10);
        w.sent(1);
        let first = w.ping();
        w.sent(2);
        let second = w.ping();
        let _ = first;
        assert_eq!(w.on_pong(&second), Reply::Confirmed(2));
    }

    #[test]
    fn a_silent_peer_is_dead_after_the_configured_time() {
        let start = Instant::now();
        let mut live = Liveness::new(Duration::from_secs(30), start);
        let at = |s: u64| start + Duration::from_secs(s);
        assert!(!live.ping_due(at(9)));
        assert!(live.ping_due(at(10)));
        live.pinged(at(10));
        assert_eq!(live.next_check(), at(20));
        live.received(at(11));
        assert!(!live.is_dead(at(40)));
        assert!(live.is_dead(at(41)));
        assert_eq!(live.time_left(at(31)), Duration::from_secs(10));
        // A peer that answers every ping never dies.
        let mut live = Liveness::new(Duration::from_secs(3), start);
        for s in 1..100 {
            assert!(!live.is_dead(at(s)));
            live.pinged(at(s));
            live.received(at(s));
        }
    }
}
