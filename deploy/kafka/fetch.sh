#!/usr/bin/env bash
# Fetch the Apache Kafka broker's jars (org.apache.kafka:kafka_2.13, its runtime dependencies and the
# log4j2 binding, as listed in pom.xml beside this script) from Maven Central into DIR/libs.
#
#   dir=$(deploy/kafka/fetch.sh [DIR])     # then: java -cp "$dir/libs/*" kafka.Kafka server.properties
#
# DIR defaults to ${XDG_CACHE_HOME:-$HOME/.cache}/intentstream/kafka-<version>. Cached: when DIR/libs
# is complete for this pom (DIR/.complete holds its checksum) it fetches nothing. Prints only DIR on
# stdout; Maven's output goes to stderr.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
pom="$here/pom.xml"
version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$pom")"
dir="${1:-${XDG_CACHE_HOME:-$HOME/.cache}/intentstream/kafka-$version}"
stamp="$(sha256sum "$pom" | cut -d' ' -f1)"

if [[ -f "$dir/.complete" && "$(cat "$dir/.complete")" == "$stamp" && -d "$dir/libs" ]]; then
    echo "$dir"
    exit 0
fi

command -v mvn >/dev/null || { echo "fetch.sh: mvn not found (apt-get install maven)" >&2; exit 1; }
mkdir -p "$dir"
# Copy into a fresh folder and swap it in whole, so that an interrupted or concurrent fetch never
# leaves a half-filled libs/ that looks usable.
staging="$(mktemp -d "$dir/libs.XXXXXX")"
trap 'rm -rf "$staging"' EXIT
mvn -q -B -f "$pom" dependency:copy-dependencies \
    -Dstyle.color=never -DincludeScope=runtime -DoutputDirectory="$staging" >&2
ls "$staging"/kafka_2.13-"$version".jar >/dev/null
rm -rf "$dir/libs"
mv "$staging" "$dir/libs"
echo "$stamp" > "$dir/.complete"
echo "$dir"
