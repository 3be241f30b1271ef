//! `#[use_read_replica(..)]`: a read-replica policy for a fn handler.
//!
//! A fn is a value, so it cannot implement a trait. The attribute leaves the fn as it is and
//! adds a companion type with the same name: a braced struct, which lives in the type
//! namespace only and so does not clash with the fn (in the value namespace). A unit or tuple
//! struct would, as it also defines a constant or a constructor fn of that name.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote};
use syn::{Item, ItemFn};

use crate::attr::{self, Errors, Policy};

const NAME: &str = "use_read_replica";

/// Expands `#[use_read_replica(args)] item`. On error the caller emits `item` unchanged next
/// to the errors, so that uses of the fn do not report errors of their own.
pub(crate) fn expand(args: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let mut errors = Errors::default();
    let mut policy = Policy::default();
    attr::parse_args(NAME, args, Span::call_site(), &mut policy, &mut errors);

    let item: Item = syn::parse2(item)?;
    let Item::Fn(function) = item else {
        return Err(errors.and(syn::Error::new_spanned(
            head(&item),
            "#[use_read_replica(..)] applies to fn handlers; for a type, use \
             #[derive(ReadReplicaControl)] with #[read_replica(..)]",
        )));
    };
    if let Some(receiver) = function.sig.receiver() {
        errors.push(syn::Error::new_spanned(
            receiver,
            "#[use_read_replica(..)] applies to free fn handlers, not to methods",
        ));
    }
    errors.finish()?;

    Ok(companion(&function, &policy))
}

/// The fn, unchanged, and its companion type.
fn companion(function: &ItemFn, policy: &Policy) -> TokenStream {
    let ItemFn {
        attrs, vis, sig, ..
    } = function;
    let name = &sig.ident;
    let items = policy.items();
    // The companion exists exactly when the fn does.
    let cfgs: Vec<_> = attrs
        .iter()
        .filter(|attr| attr.path().is_ident("cfg"))
        .collect();
    let doc = format!(
        " The read-replica policy of the fn handler `{name}`, for \
         `ReadReplicaLayer::for_handler::<{name}>()`."
    );
    quote! {
        #function

        #(#cfgs)*
        #[doc = #doc]
        #[allow(non_camel_case_types, dead_code)]
        #[derive(::core::fmt::Debug)]
        #vis struct #name {}

        #(#cfgs)*
        impl ::routing_core::__private::ReadReplicaControl for #name {
            #items
        }
    }
}

/// The tokens to point at for an item that is not a fn: its keyword and name where it has
/// them, the whole item otherwise.
fn head(item: &Item) -> TokenStream {
    let mut head = TokenStream::new();
    match item {
        Item::Struct(item) => {
            item.struct_token.to_tokens(&mut head);
            item.ident.to_tokens(&mut head);
        }
        Item::Enum(item) => {
            item.enum_token.to_tokens(&mut head);
            item.ident.to_tokens(&mut head);
        }
        Item::Union(item) => {
            item.union_token.to_tokens(&mut head);
            item.ident.to_tokens(&mut head);
        }
        Item::Trait(item) => {
            item.trait_token.to_tokens(&mut head);
            item.ident.to_tokens(&mut head);
        }
        Item::Type(item) => {
            item.type_token.to_tokens(&mut head);
            item.ident.to_tokens(&mut head);
        }
        Item::Const(item) => {
            item.const_token.to_tokens(&mut head);
            item.ident.to_tokens(&mut head);
        }
        Item::Static(item) => {
            item.static_token.to_tokens(&mut head);
            item.ident.to_tokens(&mut head);
        }
        Item::Mod(item) => {
            item.mod_token.to_tokens(&mut head);
            item.ident.to_tokens(&mut head);
        }
        Item::Impl(item) => {
            item.impl_token.to_tokens(&mut head);
            item.self_ty.to_tokens(&mut head);
        }
        item => item.to_tokens(&mut head),
    }
    head
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand_err(args: TokenStream, item: TokenStream) -> Vec<String> {
        expand(args, item)
            .unwrap_err()
            .into_iter()
            .map(|error| error.to_string())
            .collect()
    }

    #[test]
    fn companion_type() {
        let expanded = expand(
            quote!(false),
            quote! {
                #[cfg(feature = "orders")]
                /// Lists orders.
                pub(crate) async fn list_orders(id: u32) -> String {
                    id.to_string()
                }
            },
        )
        .unwrap();
        assert_eq!(
            expanded.to_string(),
            quote! {
                #[cfg(feature = "orders")]
                /// Lists orders.
                pub(crate) async fn list_orders(id: u32) -> String {
                    id.to_string()
                }

                #[cfg(feature = "orders")]
                #[doc = " The read-replica policy of the fn handler `list_orders`, for `ReadReplicaLayer::for_handler::<list_orders>()`."]
                #[allow(non_camel_case_types, dead_code)]
                #[derive(::core::fmt::Debug)]
                pub(crate) struct list_orders {}

                #[cfg(feature = "orders")]
                impl ::routing_core::__private::ReadReplicaControl for list_orders {
                    const USE_READ_REPLICA: bool = false;
                }
            }
            .to_string()
        );
    }

    #[test]
    fn errors() {
        assert_eq!(
            expand_err(
                quote!(),
                quote!(
                    fn handler() {}
                )
            ),
            ["expected `#[use_read_replica(true)]` or `#[use_read_replica(false)]`"]
        );
        assert_eq!(
            expand_err(
                quote!(1),
                quote!(
                    struct Handler;
                )
            ),
            [
                "expected `true` or `false` in #[use_read_replica(..)]",
                "#[use_read_replica(..)] applies to fn handlers; for a type, use \
                 #[derive(ReadReplicaControl)] with #[read_replica(..)]",
            ]
        );
        assert_eq!(
            expand_err(
                quote!(true),
                quote!(
                    fn handler(&self) {}
                )
            ),
            ["#[use_read_replica(..)] applies to free fn handlers, not to methods"]
        );
    }
}
