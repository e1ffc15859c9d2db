//! Durations in the file as whole milliseconds or seconds, the unit named by the key.

macro_rules! unit {
    ($name:ident, $from:ident, $to:ident, $doc:literal) => {
        #[doc = $doc]
        pub(super) mod $name {
            use std::time::Duration;

            use serde::{Deserialize, Deserializer, Serializer};

            pub(in crate::config) fn serialize<S: Serializer>(
                value: &Duration,
                serializer: S,
            ) -> Result<S::Ok, S::Error> {
                // Bounded by validation far below u64::MAX of either unit.
                serializer.serialize_u64(u64::try_from(value.$to()).unwrap_or(u64::MAX))
            }

            pub(in crate::config) fn deserialize<'de, D: Deserializer<'de>>(
                deserializer: D,
            ) -> Result<Duration, D::Error> {
                u64::deserialize(deserializer).map(Duration::$from)
            }
        }
    };
}

unit!(
    millis,
    from_millis,
    as_millis,
    "A duration as whole milliseconds."
);
unit!(secs, from_secs, as_secs, "A duration as whole seconds.");
