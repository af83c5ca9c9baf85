//! `wire_enum!`: a closed set of strings as a Rust enum.
//!
//! Hand-written rather than derived so that a value outside the set is refused with a message a
//! client can act on ("must be one of system, user, …") instead of serde's, which names Rust
//! types, and so that one list gives `as_str`, `Display`, `FromStr` and serde alike.

/// Declares a `Copy` enum whose variants are the given strings on the wire, with `ALL`,
/// `as_str`, `Display`, `FromStr` (error: [`crate::openai::WireError`]) and serde impls.
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $wire:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The value's string on the wire.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( Self::$variant => $wire, )+
                }
            }

            /// "one of a, b, c": what a value outside the set is told it should be.
            fn expected() -> String {
                let all: Vec<&str> = Self::ALL.iter().map(|v| v.as_str()).collect();
                format!("one of {}", all.join(", "))
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::openai::WireError;

            fn from_str(s: &str) -> ::std::result::Result<Self, Self::Err> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| $crate::openai::WireError {
                        message: format!("`{s}` is not {}", Self::expected()),
                        param: None,
                    })
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S>(&self, s: S) -> ::std::result::Result<S::Ok, S::Error>
            where
                S: ::serde::Serializer,
            {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D>(d: D) -> ::std::result::Result<Self, D::Error>
            where
                D: ::serde::Deserializer<'de>,
            {
                struct Visitor;
                impl ::serde::de::Visitor<'_> for Visitor {
                    type Value = $name;

                    fn expecting(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                        f.write_str(&$name::expected())
                    }

                    fn visit_str<E>(self, v: &str) -> ::std::result::Result<$name, E>
                    where
                        E: ::serde::de::Error,
                    {
                        v.parse()
                            .map_err(|_| E::invalid_value(::serde::de::Unexpected::Str(v), &self))
                    }
                }
                d.deserialize_str(Visitor)
            }
        }
    };
}
