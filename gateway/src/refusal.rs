//! Why a device is not let in: one type from the code's check to the portal's page.
//!
//! A code source's verdict ([`crate::codes::Verdict::Refused`]), the core's rules
//! ([`crate::core::Core::accept_code`]), the daemon's login and the account sign-in all
//! refuse with a [`Refusal`], and the portal picks its page from it: no layer translates
//! another's refusals by hand, so a new reason is one variant and one page.

use serde::{Deserialize, Serialize};

/// Why a redemption did not put the device online. The texts are for the log; the consumer
/// reads the portal's translated page for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// No such code.
    #[error("This code does not exist.")]
    Invalid,
    #[error("This code has expired.")]
    Expired,
    /// Its data is used up.
    #[error("This code has no data left.")]
    UsedUp,
    /// The provider revoked it.
    #[error("This code has been cancelled.")]
    Revoked,
    /// Another account's code, on a gateway that does not serve them
    /// (`codes.serve_other_accounts` off).
    #[error("This code is another account's.")]
    NotOurs,
    /// The code service is unreachable and the code is not among the provider's own codes
    /// known before: it cannot be checked now.
    #[error("This code cannot be checked while the code service is unreachable.")]
    Unlisted,
    /// The code's session counts for another account, or for none: a code is billed as
    /// one, so it counts for one account (see [`crate::core`]).
    #[error("This code is in use with another account, or without one.")]
    OtherAccount,
    /// The backend refused the account's email and password.
    #[error("The account's email or password is wrong.")]
    WrongAccount,
    /// The account is a provider's or an admin's, not a consumer's.
    #[error("The account is not a consumer's.")]
    NotConsumer,
    /// The account could not be checked (backend down, or the gateway's uplink).
    #[error("The account could not be checked: the backend is unreachable.")]
    AccountUnreachable,
    /// The code service cannot be reached (backend down, or the gateway's uplink).
    #[error("The code could not be checked: the code service is unreachable.")]
    BackendUnreachable,
    /// No MAC is known for the device's IP.
    #[error("The device is not in the LAN's neighbour table.")]
    UnknownDevice,
    /// Its address is held by an online device that is being probed, or by one of another
    /// session that has not failed its probe yet (see [`crate::neighbours::guard`]): the
    /// device may try again shortly.
    #[error("The device's address is held by another device being probed.")]
    AddressHeld,
    /// The gateway could not save the login (its disk is full or failing): not let through,
    /// nothing changed.
    #[error("The login could not be saved.")]
    NotSaved,
    /// The kernel did not take the device's elements; the login is undone (the enforcer
    /// retries whatever else it changed at the next tick).
    #[error("The kernel did not let the device through.")]
    NotEnforced,
    /// Anything else that is not the consumer's doing (a task that failed, a daemon
    /// stopping).
    #[error("Internal error.")]
    Internal,
}

impl Refusal {
    /// The refusal as a log field.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Invalid => "invalid",
            Refusal::Expired => "expired",
            Refusal::UsedUp => "used_up",
            Refusal::Revoked => "revoked",
            Refusal::NotOurs => "not_ours",
            Refusal::Unlisted => "unlisted",
            Refusal::OtherAccount => "other_account",
            Refusal::WrongAccount => "wrong_account",
            Refusal::NotConsumer => "not_consumer",
            Refusal::AccountUnreachable => "account_unreachable",
            Refusal::BackendUnreachable => "backend_unreachable",
            Refusal::UnknownDevice => "unknown_device",
            Refusal::AddressHeld => "address_held",
            Refusal::NotSaved => "not_saved",
            Refusal::NotEnforced => "not_enforced",
            Refusal::Internal => "internal",
        }
    }

    /// Whether this is a wrong guess that counts against the device: a wrong code, or a
    /// wrong password (so passwords cannot be tried through the portal faster than codes).
    /// Refusals that are not the device's doing give its limiter slot back.
    pub fn is_failed_guess(self) -> bool {
        matches!(
            self,
            Refusal::Invalid
                | Refusal::Expired
                | Refusal::UsedUp
                | Refusal::Revoked
                | Refusal::NotOurs
                // Checked against the provider's kept list: a guess all the same.
                | Refusal::Unlisted
                | Refusal::WrongAccount
        )
    }
}
