//! Who may use the dashboard: the provider's password, the logins it opens, their CSRF
//! tokens, and how fast the password may be guessed. Pure: no clock, no random source and no
//! lock here; the server passes the time and fresh random tokens in and keeps this behind a
//! mutex.
//!
//! A login is a random token in an `HttpOnly`, `SameSite=Strict` cookie. Each login has its
//! own CSRF token, which every form carries back; a form without the login's token is
//! refused, so another site cannot make the provider's browser revoke codes.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::net::Millis;
use crate::portal::limiter::{Limiter, Wait};

/// How long a login lasts.
pub const LOGIN_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// The most logins kept at once; a new one beyond it ends the oldest.
pub const MAX_LOGINS: usize = 16;
/// Wrong passwords allowed per address, and over all addresses together, per
/// [`GUESS_WINDOW`]: past the overall cap no password is checked, from any address.
pub const GUESSES_PER_ADDRESS: u32 = 5;
pub const GUESSES_GLOBAL: u32 = 20;
pub const GUESS_WINDOW: Duration = Duration::from_secs(60);
/// Forms (make codes, revoke, log out a device) allowed per address, and over all, per
/// [`GUESS_WINDOW`]: a person clicks a few; a script looping on "make codes" is held back.
pub const FORMS_PER_ADDRESS: u32 = 30;
pub const FORMS_GLOBAL: u32 = 120;
/// The key under which [`Auth`]'s overall window counts every address's guesses.
const EVERYONE: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

/// Why a login was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    WrongPassword,
    /// Too many wrong passwords lately: try again after the wait.
    TooMany(Wait),
}

#[derive(Debug, Clone)]
struct Login {
    csrf: String,
    expires: Millis,
}

#[derive(Debug)]
pub struct Auth {
    /// Only the digest is kept, and compared in constant time: how long a comparison takes
    /// tells nothing about how much of a guess was right.
    password: [u8; 32],
    logins: HashMap<String, Login>,
    limiter: Limiter,
    /// Every address's guesses as one, capped at [`GUESSES_GLOBAL`] without exception. The
    /// portal's limiter lets an address with no guess of its own through its global cap (a
    /// consumer's first try must not wait for strangers' guesses), which made 20 addresses'
    /// guesses come to 30 checks a minute; the dashboard has one password and one person
    /// typing it, so its cap over everyone is exact.
    overall: Limiter,
    forms: Limiter,
}

fn digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

impl Auth {
    pub fn new(password: &str) -> Self {
        Auth {
            password: digest(password),
            logins: HashMap::new(),
            limiter: Limiter::new(GUESSES_PER_ADDRESS, GUESSES_GLOBAL, GUESS_WINDOW),
            overall: Limiter::new(GUESSES_GLOBAL, GUESSES_GLOBAL, GUESS_WINDOW),
            forms: Limiter::new(FORMS_PER_ADDRESS, FORMS_GLOBAL, GUESS_WINDOW),
        }
    }

    /// `password` typed from `ip` at `now`: on success a login under `token` (with
    /// `csrf` as its CSRF token) is opened.
    pub fn log_in(
        &mut self,
        ip: IpAddr,
        password: &str,
        now: Millis,
        token: String,
        csrf: String,
    ) -> Result<(), Refused> {
        let overall = self.overall.begin(EVERYONE, now).map_err(|wait| {
            Refused::TooMany(Wait {
                global: true,
                ..wait
            })
        })?;
        let attempt = match self.limiter.begin(ip, now) {
            Ok(attempt) => attempt,
            Err(wait) => {
                self.overall.refund(overall);
                return Err(Refused::TooMany(wait));
            }
        };
        if !same(&digest(password), &self.password) {
            self.limiter.failed(attempt);
            self.overall.failed(overall);
            return Err(Refused::WrongPassword);
        }
        self.limiter.refund(attempt);
        self.overall.refund(overall);
        self.logins.retain(|_, login| login.expires > now);
        if self.logins.len() >= MAX_LOGINS {
            let oldest = self
                .logins
                .iter()
                .min_by_key(|(_, login)| login.expires)
                .map(|(token, _)| token.clone());
            if let Some(oldest) = oldest {
                self.logins.remove(&oldest);
            }
        }
        self.logins.insert(
            token,
            Login {
                csrf,
                expires: now.plus(LOGIN_LIFETIME),
            },
        );
        Ok(())
    }

    /// The CSRF token of the login under `token`, if it is open at `now`.
    pub fn csrf(&mut self, token: &str, now: Millis) -> Option<String> {
        match self.logins.get(token) {
            Some(login) if login.expires > now => Some(login.csrf.clone()),
            Some(_) => {
                self.logins.remove(token);
                None
            }
            None => None,
        }
    }

    /// Whether `csrf` is the token of the login under `token` at `now`.
    pub fn check_form(&mut self, token: &str, csrf: &str, now: Millis) -> bool {
        self.csrf(token, now)
            .is_some_and(|expected| same(&digest(&expected), &digest(csrf)))
    }

    /// Counts a form sent from `ip` at `now`, or says how long to wait: every form counts,
    /// whatever it asks.
    pub fn form(&mut self, ip: IpAddr, now: Millis) -> Result<(), Wait> {
        let attempt = self.forms.begin(ip, now)?;
        self.forms.failed(attempt);
        Ok(())
    }

    pub fn log_out(&mut self, token: &str) {
        self.logins.remove(token);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    fn auth() -> Auth {
        Auth::new("correct horse battery")
    }

    /// A login from `IP` with the right password: session `token`, form token `csrf`.
    fn open(auth: &mut Auth, now: Millis, token: &str, csrf: &str) {
        auth.log_in(IP, "correct horse battery", now, token.into(), csrf.into())
            .unwrap();
    }

    #[test]
    fn the_right_password_opens_a_login_whose_forms_need_its_csrf_token() {
        let mut auth = auth();
        let now = Millis(1_000_000);
        open(&mut auth, now, "t1", "c1");
        assert_eq!(auth.csrf("t1", now).as_deref(), Some("c1"));
        assert!(auth.check_form("t1", "c1", now));
        assert!(!auth.check_form("t1", "c2", now));
        assert!(!auth.check_form("t2", "c1", now));
        assert!(!auth.check_form("t1", "", now));
    }

    #[test]
    fn logins_end_after_their_lifetime_and_at_log_out() {
        let mut auth = auth();
        let now = Millis(1_000_000);
        open(&mut auth, now, "t1", "c1");
        open(&mut auth, now, "t2", "c2");
        assert!(auth.csrf("t1", now.plus(LOGIN_LIFETIME)).is_none());
        auth.log_out("t2");
        assert!(auth.csrf("t2", now).is_none());
    }

    #[test]
    fn wrong_passwords_are_refused_then_held_back() {
        let mut auth = auth();
        let now = Millis(1_000_000);
        for i in 0..GUESSES_PER_ADDRESS {
            assert_eq!(
                auth.log_in(IP, &format!("guess {i}"), now, "t".into(), "c".into()),
                Err(Refused::WrongPassword)
            );
        }
        // Held back, even with the right password, until the window has passed.
        assert!(matches!(
            auth.log_in(IP, "correct horse battery", now, "t".into(), "c".into()),
            Err(Refused::TooMany(_))
        ));
        assert!(auth.csrf("t", now).is_none());
        let later = now.plus(GUESS_WINDOW);
        open(&mut auth, later, "t", "c");
    }

    /// 40 wrong passwords from 20 addresses within seconds, two from each in turn: exactly
    /// the overall cap of them is checked, the rest held back whichever address sends them
    /// (the first 10 addresses' pairs fill the cap; the last 10 addresses, fresh, used to be
    /// checked all the same: 30 checks); a minute later the right password works again.
    #[test]
    fn the_overall_cap_holds_over_many_addresses() {
        let mut auth = auth();
        let start = Millis(1_000_000);
        let mut checked = 0;
        let mut held_back = 0;
        for n in 0..20u8 {
            let ip = IpAddr::from([192, 0, 2, n + 1]);
            for guess in 0..2u64 {
                let at = Millis(start.0 + u64::from(n) * 100 + guess * 10);
                match auth.log_in(ip, "wrong guess", at, "t".into(), "c".into()) {
                    Err(Refused::WrongPassword) => checked += 1,
                    Err(Refused::TooMany(wait)) => {
                        assert!(wait.global, "held back by the overall cap");
                        held_back += 1;
                    }
                    Ok(()) => panic!("a wrong password opened a login"),
                }
            }
        }
        assert_eq!((checked, held_back), (GUESSES_GLOBAL, 40 - GUESSES_GLOBAL));
        let fresh = IpAddr::from([192, 0, 2, 99]);
        assert!(matches!(
            auth.log_in(
                fresh,
                "correct horse battery",
                start.plus(Duration::from_secs(5)),
                "t".into(),
                "c".into()
            ),
            Err(Refused::TooMany(_))
        ));
        auth.log_in(
            fresh,
            "correct horse battery",
            start.plus(GUESS_WINDOW + Duration::from_secs(2)),
            "t".into(),
            "c".into(),
        )
        .unwrap();
    }

    #[test]
    fn forms_are_counted_and_held_back_past_the_limit() {
        let mut auth = auth();
        let now = Millis(1_000_000);
        for _ in 0..FORMS_PER_ADDRESS {
            auth.form(IP, now).unwrap();
        }
        let wait = auth.form(IP, now).unwrap_err();
        assert!(wait.seconds >= 1);
        auth.form(IP, now.plus(GUESS_WINDOW)).unwrap();
    }

    #[test]
    fn at_most_max_logins_are_kept_and_the_oldest_goes_first() {
        let mut auth = auth();
        for i in 0..=MAX_LOGINS as u64 {
            auth.log_in(
                IP,
                "correct horse battery",
                Millis(1_000 + i),
                format!("t{i}"),
                format!("c{i}"),
            )
            .unwrap();
        }
        let now = Millis(2_000);
        assert!(auth.csrf("t0", now).is_none());
        assert!(auth.csrf(&format!("t{MAX_LOGINS}"), now).is_some());
        assert_eq!(auth.logins.len(), MAX_LOGINS);
    }
}
