//! `#[derive(Describe)]`: `T::describe()` returns `"T { field: Type, ... }"`.

use proc_macro::TokenStream;
use quote::{ToTokens, quote};
use syn::{Data, DeriveInput, Fields, parse_macro_input};

#[proc_macro_derive(Describe)]
pub fn derive_describe(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

fn expand(input: &DeriveInput) -> syn::Result<proc_macro2::TokenStream> {
    let Data::Struct(data) = &input.data else {
        return Err(syn::Error::new_spanned(
            &input.ident,
            "Describe supports structs only",
        ));
    };
    let Fields::Named(named) = &data.fields else {
        return Err(syn::Error::new_spanned(
            &input.ident,
            "Describe needs named fields",
        ));
    };
    let fields: Vec<String> = named
        .named
        .iter()
        .map(|f| {
            let name = f
                .ident
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default();
            let ty = f.ty.to_token_stream().to_string().replace(' ', "");
            format!("{name}: {ty}")
        })
        .collect();
    let ident = &input.ident;
    let text = format!("{ident} {{ {} }}", fields.join(", "));
    let count = fields.len();
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    Ok(quote! {
        impl #impl_generics #ident #ty_generics #where_clause {
            pub const FIELD_COUNT: usize = #count;
            pub fn describe() -> &'static str {
                #text
            }
        }
    })
}
