//! `value_enum!`: an enum declared once, with its list of every variant and
//! the lookup from its value generated from that one declaration, so the
//! list cannot drift from the enum (the tables, cookie categories, FLOW_MOD
//! commands; the lab's resource kinds).

/// Declares an enum and generates, from the same variant list:
/// - `ALL`: every variant, in declaration order;
/// - with a `: repr` and `= value` per variant, `#[repr(repr)]` and
///   `from_repr(v) -> Option<Self>`.
///
/// ```
/// ovs_flows::value_enum! {
///     #[derive(Debug, Clone, Copy, PartialEq, Eq)]
///     pub enum Color: u8 { Red = 1, Green = 2 }
/// }
/// assert_eq!(Color::ALL, [Color::Red, Color::Green]);
/// assert_eq!(Color::from_repr(2), Some(Color::Green));
/// assert_eq!(Color::from_repr(3), None);
/// ```
#[macro_export]
macro_rules! value_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident : $repr:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $value:expr ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[repr($repr)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant = $value ),+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The variant whose value is `v`.
            pub fn from_repr(v: $repr) -> Option<$name> {
                $name::ALL.iter().copied().find(|x| *x as $repr == v)
            }
        }
    };
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        $vis enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
        }
    };
}
