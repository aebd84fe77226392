//! `{{name}}`: a Shoal service. `GET /` greets with the manifest's `greeting`.

use shoal_sdk::http::{Request, Response};

fn handle(req: Request) -> Response {
    match req.path() {
        "/" => {
            let greeting =
                shoal_sdk::config::get("greeting").unwrap_or_else(|| "Hello".to_owned());
            // A metric the host exports as shoal_guest_{{metric}}:greetings_total.
            let _ = shoal_sdk::metrics::counter_add("greetings_total", &[], 1.0);
            shoal_sdk::log::info("greeted", &[("greeting", &greeting)]);
            Response::text(200, format!("{greeting} from {{name}}!\n"))
        }
        other => Response::text(404, format!("no route for {other}\n")),
    }
}

shoal_sdk::http_service!(handle);
