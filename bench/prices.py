"""The one price table the benchmarks use: AWS list prices, US East (N. Virginia).

Taken on 2026-12-01 from the AWS pricing pages named on each entry (first pricing tier,
on-demand, no free tier, x86_64 Lambda). The figures were cross-checked against AWS's
own pages and their mirrors in the docs corpus (API Gateway, DynamoDB on-demand after the
November 2024 reduction, SQS, S3, Lambda). Change them here only, with the date.
"""

from __future__ import annotations

from dataclasses import dataclass

PRICES_TAKEN_ON = "2026-12-01"
REGION = "us-east-1"
MILLION = 1_000_000


@dataclass(frozen=True)
class Price:
    usd: float  # dollars per `per` units
    per: int
    unit: str
    source: str

    @property
    def each(self) -> float:
        return self.usd / self.per


API_GATEWAY_SOURCE = "https://aws.amazon.com/api-gateway/pricing/"
LAMBDA_SOURCE = "https://aws.amazon.com/lambda/pricing/"
DYNAMODB_SOURCE = "https://aws.amazon.com/dynamodb/pricing/on-demand/"
SQS_SOURCE = "https://aws.amazon.com/sqs/pricing/"
S3_SOURCE = "https://aws.amazon.com/s3/pricing/"

PRICES: dict[str, Price] = {
    # API Gateway: REST API first 333 M requests/month; HTTP API first 300 M (per 512 KB).
    "apigw.rest_request": Price(3.50, MILLION, "request", API_GATEWAY_SOURCE),
    "apigw.http_request": Price(1.00, MILLION, "request", API_GATEWAY_SOURCE),
    # WebSocket API: messages (per 32 KB, first 1 B/month) and connection minutes.
    "apigw.websocket_message": Price(1.00, MILLION, "message", API_GATEWAY_SOURCE),
    "apigw.websocket_connection_minute": Price(0.25, MILLION, "minute", API_GATEWAY_SOURCE),
    # Lambda, x86_64: requests and duration (GB-seconds, billed per ms).
    "lambda.request": Price(0.20, MILLION, "request", LAMBDA_SOURCE),
    "lambda.gb_second": Price(0.0000166667, 1, "GB-s", LAMBDA_SOURCE),
    # DynamoDB on-demand, Standard table class.
    "dynamodb.write_request_unit": Price(0.625, MILLION, "WRU", DYNAMODB_SOURCE),
    "dynamodb.read_request_unit": Price(0.125, MILLION, "RRU", DYNAMODB_SOURCE),
    # SQS: FIFO and standard queues, per request (each 64 KB chunk of payload is one).
    "sqs.fifo_request": Price(0.50, MILLION, "request", SQS_SOURCE),
    "sqs.standard_request": Price(0.40, MILLION, "request", SQS_SOURCE),
    # S3 Standard: PUT, COPY, POST, LIST and GET, SELECT and other requests.
    "s3.put_request": Price(0.005, 1000, "request", S3_SOURCE),
    "s3.get_request": Price(0.0004, 1000, "request", S3_SOURCE),
}


def price(name: str) -> float:
    """Dollars for one unit of ``name`` (one request, one GB-second, ...)."""
    return PRICES[name].each
