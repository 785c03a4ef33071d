import logging

pytest_plugins = ["tests.support.fixtures"]

# grpc.aio logs at DEBUG while it holds its process-wide lock (first channel or server after none: "Using ... as I/O
# engine"), and a grpc.aio object finalized by the garbage collector takes that lock. In one test process, an
# in-process operator (kopf --verbose sets the root logger to DEBUG) logging from its thread while real gRPC servers
# start and stop on the test's loop can then deadlock: the operator's thread holds a handler's lock and waits for
# grpc's, the loop's thread holds grpc's and waits for the handler's (grpc/grpc#43421, grpcio 1.75.1 onwards; seen
# once here, in tests/integration/test_operator_live_status.py). gRPC's own loggers stay at WARNING in the tests so
# that no record is emitted under that lock.
logging.getLogger("grpc").setLevel(logging.WARNING)
