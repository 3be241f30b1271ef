//! `#[derive(ReadReplicaControl)]` with its helper attribute `#[read_replica(..)]`.

use proc_macro2::TokenStream;
use quote::quote;
use syn::{Attribute, Data, DeriveInput, Fields};

use crate::attr::{self, Errors, Policy};

const NAME: &str = "read_replica";

/// Expands the derive for `input`, the item it is put on.
pub(crate) fn expand(input: TokenStream) -> syn::Result<TokenStream> {
    let input: DeriveInput = syn::parse2(input)?;
    let mut errors = Errors::default();

    let mut policy = Policy::default();
    let mut first = true;
    for attr in input.attrs.iter().filter(|attr| is_ours(attr)) {
        if first {
            attr::parse_attribute(NAME, attr, &mut policy, &mut errors);
            first = false;
        } else {
            errors.push(syn::Error::new_spanned(
                attr,
                "duplicate #[read_replica(..)] attribute; expected one per type",
            ));
            // Still report what is wrong inside it.
            attr::parse_attribute(NAME, attr, &mut Policy::default(), &mut errors);
        }
    }

    match &input.data {
        Data::Struct(data) => misplaced(&data.fields, "field", &mut errors),
        Data::Enum(data) => {
            for variant in &data.variants {
                misplaced_attrs(&variant.attrs, "variant", &mut errors);
                misplaced(&variant.fields, "field", &mut errors);
            }
        }
        Data::Union(data) => errors.push(syn::Error::new_spanned(
            data.union_token,
            "`ReadReplicaControl` cannot be derived for a union; expected a struct or an enum",
        )),
    }
    errors.finish()?;

    let name = &input.ident;
    let items = policy.items();
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    Ok(quote! {
        #[automatically_derived]
        impl #impl_generics ::routing_core::__private::ReadReplicaControl
            for #name #ty_generics #where_clause
        {
            #items
        }
    })
}

fn is_ours(attr: &Attribute) -> bool {
    attr.path().is_ident(NAME)
}

/// `#[read_replica(..)]` on a field or a variant would otherwise be accepted and ignored.
fn misplaced(fields: &Fields, what: &str, errors: &mut Errors) {
    for field in fields {
        misplaced_attrs(&field.attrs, what, errors);
    }
}

fn misplaced_attrs(attrs: &[Attribute], what: &str, errors: &mut Errors) {
    for attr in attrs.iter().filter(|attr| is_ours(attr)) {
        errors.push(syn::Error::new_spanned(
            attr,
            format!("#[read_replica(..)] applies to the type, not to a {what}"),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand_ok(input: TokenStream) -> String {
        expand(input).unwrap().to_string()
    }

    fn expand_err(input: TokenStream) -> Vec<String> {
        expand(input)
            .unwrap_err()
            .into_iter()
            .map(|error| error.to_string())
            .collect()
    }

    #[test]
    fn default_is_true() {
        assert_eq!(
            expand_ok(quote!(
                struct Handler;
            )),
            quote! {
                #[automatically_derived]
                impl ::routing_core::__private::ReadReplicaControl for Handler {
                    const USE_READ_REPLICA: bool = true;
                }
            }
            .to_string()
        );
    }

    #[test]
    fn false_and_generics() {
        assert_eq!(
            expand_ok(quote!(
                #[read_replica(false)]
                enum Handler<'a, T: Clone, const N: usize>
                where
                    T: Send,
                {
                    A(&'a [T; N]),
                }
            )),
            quote! {
                #[automatically_derived]
                impl<'a, T: Clone, const N: usize> ::routing_core::__private::ReadReplicaControl
                    for Handler<'a, T, N>
                where
                    T: Send,
                {
                    const USE_READ_REPLICA: bool = false;
                }
            }
            .to_string()
        );
    }

    #[test]
    fn errors() {
        assert_eq!(
            expand_err(quote!(
                #[read_replica(yes)]
                #[read_replica]
                union Handler {
                    #[read_replica(true)]
                    a: u8,
                }
            )),
            [
                "expected `true` or `false` in #[read_replica(..)]",
                "duplicate #[read_replica(..)] attribute; expected one per type",
                "expected `#[read_replica(true)]` or `#[read_replica(false)]`",
                "`ReadReplicaControl` cannot be derived for a union; expected a struct or an enum",
            ]
        );
        assert_eq!(
            expand_err(quote!(
                enum Handler {
                    #[read_replica(false)]
                    A {
                        #[read_replica(false)]
                        a: u8,
                    },
                }
            )),
            [
                "#[read_replica(..)] applies to the type, not to a variant",
                "#[read_replica(..)] applies to the type, not to a field",
            ]
        );
        assert_eq!(
            expand_err(quote!(
                #[read_replica = false]
                struct Handler;
            )),
            ["expected `#[read_replica(true)]` or `#[read_replica(false)]`"]
        );
    }
}
