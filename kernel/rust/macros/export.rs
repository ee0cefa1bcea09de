// SPDX-License-Identifier: GPL-2.0

use proc_macro::{TokenStream, TokenTree};

/// Returns the name of the function `ts` defines, if it defines one.
fn function_name(ts: TokenStream) -> Option<String> {
    let mut it = ts.into_iter();
    while let Some(tt) = it.next() {
        if let TokenTree::Ident(kw) = &tt {
            if kw.to_string() == "fn" {
                return match it.next() {
                    Some(TokenTree::Ident(name)) => Some(name.to_string()),
                    _ => None,
                };
            }
        }
    }
    None
}

pub(crate) fn export(_attr: TokenStream, ts: TokenStream) -> TokenStream {
    let Some(name) = function_name(ts.clone()) else {
        return "::core::compile_error!(\"#[export] only applies to functions\");"
            .parse()
            .unwrap();
    };
    // Both branches must have one type: the function pointer type of the
    // C declaration that bindgen made. A function whose prototype differs
    // from C's does not coerce to it, and the build fails.
    let check =
        format!("const _: () = {{ if true {{ ::kernel::bindings::{name} }} else {{ {name} }}; }};");
    let mut out: TokenStream = check.parse().unwrap();
    out.extend("#[no_mangle]".parse::<TokenStream>().unwrap());
    out.extend(ts);
    out
}
