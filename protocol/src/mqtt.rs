//! MQTT topic mapping (seed 004): clients publish envelopes to
//! [`SEND_TOPIC`] and receive theirs on `clients/<userID>/receive`.
//!
//! Pure functions only; the MQTT frontend uses them to route PUBLISH
//! packets and to authorize SUBSCRIBE filters. A client may subscribe only
//! to its own receive topic: no wildcards, no one else's topics.

use crate::error::ErrorCode;
use crate::id::UserId;

/// Topic clients publish envelopes to.
pub const SEND_TOPIC: &str = "envelopes/send";
/// Prefix of per-user receive topics.
const RECEIVE_PREFIX: &str = "clients/";
/// Suffix of per-user receive topics.
const RECEIVE_SUFFIX: &str = "/receive";

/// What a PUBLISH topic from a client means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Inbound {
    /// The payload is an envelope to route.
    Send,
}

/// Why a topic or filter was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    /// Clients may publish only to `envelopes/send`.
    #[error("clients may publish only to \"envelopes/send\"")]
    NotPublishable,
    /// Clients may subscribe only to their own `clients/<userID>/receive`.
    #[error("clients may subscribe only to their own clients/<userID>/receive")]
    NotSubscribable,
}

impl TopicError {
    /// The protocol error code (and through it the MQTT 5 reason code).
    pub const fn code(&self) -> ErrorCode {
        match self {
            Self::NotPublishable => ErrorCode::InvalidDestination,
            Self::NotSubscribable => ErrorCode::Forbidden,
        }
    }
}

/// Classifies a topic a client published to.
pub fn inbound(topic: &str) -> Result<Inbound, TopicError> {
    if topic == SEND_TOPIC { Ok(Inbound::Send) } else { Err(TopicError::NotPublishable) }
}

/// The topic the server publishes `user`'s deliveries to.
pub fn receive_topic(user: UserId<'_>) -> String {
    let mut t = String::with_capacity(RECEIVE_PREFIX.len() + user.as_str().len() + RECEIVE_SUFFIX.len());
    t.push_str(RECEIVE_PREFIX);
    t.push_str(user.as_str());
    t.push_str(RECEIVE_SUFFIX);
    t
}

/// The user whose receive topic this is, if it is one.
pub fn receive_topic_user(topic: &str) -> Option<UserId<'_>> {
    let user = topic.strip_prefix(RECEIVE_PREFIX)?.strip_suffix(RECEIVE_SUFFIX)?;
    UserId::parse(user).ok()
}

/// Checks a SUBSCRIBE filter from a client authenticated as `user`: only
/// the exact receive topic of that user is allowed (wildcards are refused,
/// since `+` or `#` could match other users' topics).
pub fn authorize_subscribe(user: UserId<'_>, filter: &str) -> Result<(), TopicError> {
    match receive_topic_user(filter) {
        Some(owner) if owner == user => Ok(()),
        _ => Err(TopicError::NotSubscribable),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn user(s: &str) -> UserId<'_> {
        UserId::parse(s).unwrap()
    }

    #[test]
    fn maps_seed_topics() {
        assert_eq!(inbound("envelopes/send"), Ok(Inbound::Send));
        assert_eq!(inbound("envelopes/send/"), Err(TopicError::NotPublishable));
        assert_eq!(inbound("clients/bob/receive"), Err(TopicError::NotPublishable));
        assert_eq!(receive_topic(user("bob")), "clients/bob/receive");
        assert_eq!(receive_topic_user("clients/bob/receive"), Some(user("bob")));
        assert_eq!(receive_topic_user("clients//receive"), None);
        assert_eq!(receive_topic_user("clients/a/b/receive"), None);
        assert_eq!(receive_topic_user("clients/bob/send"), None);
    }

    #[test]
    fn subscribe_only_to_own_topic() {
        let bob = user("bob");
        assert_eq!(authorize_subscribe(bob, "clients/bob/receive"), Ok(()));
        for f in ["clients/alice/receive", "clients/+/receive", "clients/#", "#", "clients/bob/+", "envelopes/send", ""]
        {
            assert_eq!(authorize_subscribe(bob, f), Err(TopicError::NotSubscribable), "{f}");
        }
        assert_eq!(TopicError::NotSubscribable.code().mqtt_reason(), 0x87);
    }

    proptest! {
        #[test]
        fn receive_topic_round_trips(name in "[A-Za-z0-9._@~=:-]{1,128}") {
            let u = user(&name);
            let topic = receive_topic(u);
            prop_assert_eq!(receive_topic_user(&topic), Some(u));
            prop_assert_eq!(authorize_subscribe(u, &topic), Ok(()));
        }

        #[test]
        fn arbitrary_topics_never_panic(topic in "\\PC{0,80}") {
            let _ = (inbound(&topic), receive_topic_user(&topic), authorize_subscribe(user("bob"), &topic));
        }
    }
}
