"""The ChatKit protocol: request checks, answering, and the events sent to the browser."""
