"""The data path: client bytes -> downstream -> http1 -> session -> exchange -> upstream."""
