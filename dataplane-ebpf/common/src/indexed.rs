//! Enums that index counter slots and name them: the shape both the
//! counters and the drop reasons take.

/// Defines a `#[repr(u32)]` enum whose variants are dense indices, with the
/// word each one is shown as.
macro_rules! indexed_enum {
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($(#[$vmeta:meta])* $var:ident = $word:literal,)* }) => {
        $(#[$meta])*
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        $vis enum $name { $($(#[$vmeta])* $var,)* }

        impl $name {
            /// Every variant, in index order.
            pub const ALL: &'static [$name] = &[$($name::$var,)*];
            /// Number of variants: the size of a map indexed by this enum.
            pub const COUNT: u32 = $name::ALL.len() as u32;

            /// The word operators see for this variant.
            pub const fn name(self) -> &'static str {
                match self { $($name::$var => $word,)* }
            }

            /// The variant with this index, if any.
            pub fn from_index(i: u32) -> Option<$name> {
                $name::ALL.get(i as usize).copied()
            }

            /// The map index of this variant.
            #[inline(always)]
            pub const fn index(self) -> u32 {
                self as u32
            }
        }
    };
}
pub(crate) use indexed_enum;
