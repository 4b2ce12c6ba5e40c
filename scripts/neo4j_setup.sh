#!/usr/bin/env bash
# Copy the Neo4j Community server jars from Maven Central into .neo4j/lib.
#
# Idempotent: when the jar of the pinned version (neo4j/pom.xml, property
# neo4j.version) is already in .neo4j/lib, it does nothing. Needs Java 17 or newer
# and Maven on PATH. Usage: scripts/neo4j_setup.sh
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
pom="$repo_root/neo4j/pom.xml"
lib_dir="$repo_root/.neo4j/lib"

if ! command -v java >/dev/null 2>&1; then
    echo "neo4j_setup: java not found on PATH. Install a Java 17+ JDK (Debian: apt-get install openjdk-17-jdk-headless)" >&2
    exit 1
fi
java_major="$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n 1)"
if [[ -z "$java_major" || "$java_major" -lt 17 ]]; then
    echo "neo4j_setup: Java ${java_major:-of unknown version} found, but Neo4j 5.26 needs Java 17 or newer" >&2
    exit 1
fi
if ! command -v mvn >/dev/null 2>&1; then
    echo "neo4j_setup: mvn not found on PATH. Install Maven (Debian: apt-get install maven)" >&2
    exit 1
fi

neo4j_version="$(sed -n 's:.*<neo4j.version>\(.*\)</neo4j.version>.*:\1:p' "$pom")"
if [[ -z "$neo4j_version" ]]; then
    echo "neo4j_setup: no <neo4j.version> property found in $pom" >&2
    exit 1
fi

if [[ -f "$lib_dir/neo4j-$neo4j_version.jar" ]]; then
    echo "neo4j_setup: Neo4j $neo4j_version jars already in $lib_dir"
    exit 0
fi

# Jars of another version would mix two classpaths, so start from an empty folder.
rm -rf "$lib_dir"
mkdir -p "$lib_dir"
echo "neo4j_setup: resolving Neo4j $neo4j_version with Maven into $lib_dir"
if ! mvn -B -q -f "$pom" dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$lib_dir"; then
    rm -rf "$lib_dir"
    echo "neo4j_setup: Maven failed to resolve org.neo4j:neo4j:$neo4j_version. See its output above." >&2
    exit 1
fi
echo "neo4j_setup: copied $(find "$lib_dir" -name '*.jar' | wc -l) jars to $lib_dir"
