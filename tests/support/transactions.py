"""Writes transactions to one partition with librdkafka's transactional producer.

    transactions.py BOOTSTRAP TOPIC PARTITION STEP...

Each STEP is `commit:N` or `abort:N` (a transaction of N records, then committed or
aborted), `plain:N` (N records from a non-transactional producer) or `hold:N` (a
transaction of N records left open: the script prints "open" and commits it once a line
arrives on its standard input, or aborts it if the input closes empty). Values are
`<step index>-<kind>-<record index>`, so a reader can tell which records must arrive.
Run with PYTHONPATH pointing at the unpacked confluent-kafka wheel
(scripts/install-kcat).
"""

import sys

from confluent_kafka import Producer


def main():
    bootstrap, topic, partition, *steps = sys.argv[1:]
    partition = int(partition)
    txn = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"kd-test-{topic}"})
    txn.init_transactions(30)
    plain = Producer({"bootstrap.servers": bootstrap})
    for index, step in enumerate(steps):
        kind, count = step.split(":")
        values = [f"{index}-{kind}-{i}".encode() for i in range(int(count))]
        if kind == "plain":
            for v in values:
                plain.produce(topic, value=v, partition=partition)
            if plain.flush(30) != 0:
                sys.exit(f"plain records of step {index} were not delivered")
            continue
        txn.begin_transaction()
        for v in values:
            txn.produce(topic, value=v, partition=partition)
        if kind == "hold":
            txn.flush(30)
            print("open", flush=True)
            if sys.stdin.readline():
                txn.commit_transaction(30)
            else:
                txn.abort_transaction(30)
        elif kind == "commit":
            txn.commit_transaction(30)
        elif kind == "abort":
            txn.abort_transaction(30)
        else:
            sys.exit(f"unknown step {step!r}")


if __name__ == "__main__":
    main()
