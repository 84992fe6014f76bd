//! The MQTT topic mapping on arbitrary UTF-8 topics and filters.

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_protocol::UserId;
use switchboard_protocol::mqtt::{self, SEND_TOPIC};

fuzz_target!(|data: &[u8]| {
    let Ok(topic) = core::str::from_utf8(data) else {
        return;
    };

    assert_eq!(mqtt::inbound(topic).is_ok(), topic == SEND_TOPIC);

    if let Some(user) = mqtt::receive_topic_user(topic) {
        assert!(UserId::parse(user.as_str()).is_ok());
        assert_eq!(mqtt::receive_topic(user), topic);
    }

    let bob = UserId::parse("bob").unwrap();
    let allowed = mqtt::authorize_subscribe(bob, topic).is_ok();
    assert_eq!(allowed, topic == "clients/bob/receive", "filter {topic:?}");
});
