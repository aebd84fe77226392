// `{{name}}`: a Shoal service in C, on bindings that `wit-bindgen c` generates from
// the `shoal:platform/service` world. `GET /` greets with the manifest's `greeting`.

#include <stdio.h>
#include <string.h>

#include "service.h"

static service_string_t str(const char *text) {
    service_string_t s;
    service_string_set(&s, text);
    return s;
}

static void respond(exports_wasi_http_incoming_handler_own_response_outparam_t response_out,
                    uint16_t status, const char *text) {
    wasi_http_types_own_outgoing_response_t response =
        wasi_http_types_constructor_outgoing_response(wasi_http_types_constructor_fields());
    wasi_http_types_borrow_outgoing_response_t borrowed =
        wasi_http_types_borrow_outgoing_response(response);
    wasi_http_types_method_outgoing_response_set_status_code(borrowed, status);
    wasi_http_types_own_outgoing_body_t body;
    if (!wasi_http_types_method_outgoing_response_body(borrowed, &body)) {
        wasi_http_types_outgoing_response_drop_own(response);
        return;
    }
    wasi_http_types_result_own_outgoing_response_error_code_t result = {.is_err = false};
    result.val.ok = response;
    wasi_http_types_static_response_outparam_set(response_out, &result);
    wasi_http_types_own_output_stream_t stream;
    if (wasi_http_types_method_outgoing_body_write(wasi_http_types_borrow_outgoing_body(body),
                                                   &stream)) {
        // One write: the answer is far below the 4096 bytes a write may carry.
        service_list_u8_t bytes = {(uint8_t *)text, strlen(text)};
        wasi_io_streams_stream_error_t error;
        if (!wasi_io_streams_method_output_stream_blocking_write_and_flush(
                wasi_io_streams_borrow_output_stream(stream), &bytes, &error)) {
            wasi_io_streams_stream_error_free(&error);
        }
        wasi_io_streams_output_stream_drop_own(stream);
    }
    wasi_http_types_error_code_t error;
    wasi_http_types_static_outgoing_body_finish(body, NULL, &error);
}

void exports_wasi_http_incoming_handler_handle(
    exports_wasi_http_incoming_handler_own_incoming_request_t request,
    exports_wasi_http_incoming_handler_own_response_outparam_t response_out) {
    service_string_t path;
    bool root = false;
    if (wasi_http_types_method_incoming_request_path_with_query(
            wasi_http_types_borrow_incoming_request(request), &path)) {
        root = path.len >= 1 && path.ptr[0] == '/' && (path.len == 1 || path.ptr[1] == '?');
        service_string_free(&path);
    }
    wasi_http_types_incoming_request_drop_own(request);
    if (!root) {
        respond(response_out, 404, "no such route\n");
        return;
    }

    char greeting[256] = "Hello";
    service_string_t key = str("greeting");
    service_string_t value;
    if (shoal_platform_config_get(&key, &value)) {
        snprintf(greeting, sizeof greeting, "%.*s", (int)value.len, (const char *)value.ptr);
        service_string_free(&value);
    }

    // A metric the host exports as shoal_guest_{{metric}}:greetings_total.
    service_string_t metric = str("greetings_total");
    service_list_tuple2_string_string_t no_labels = {NULL, 0};
    shoal_platform_metrics_metric_error_t metric_error;
    if (!shoal_platform_metrics_counter_add(&metric, &no_labels, 1.0, &metric_error)) {
        shoal_platform_metrics_metric_error_free(&metric_error);
    }

    service_tuple2_string_string_t field = {str("greeting"), str(greeting)};
    service_list_tuple2_string_string_t fields = {&field, 1};
    service_string_t message = str("greeted");
    shoal_platform_log_write(SHOAL_PLATFORM_LOG_LEVEL_INFO, &message, &fields);

    char text[512];
    snprintf(text, sizeof text, "%s from {{name}}!\n", greeting);
    respond(response_out, 200, text);
}
