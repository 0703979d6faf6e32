import CatenaCore
import Foundation
import Testing

@Suite("The metric table")
struct MetricTableTests {
    /// docs/ARCHITECTURE.md, found from this file's place in the repository.
    static func architecture() throws -> String {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        return try String(contentsOf: root.appendingPathComponent("docs/ARCHITECTURE.md"), encoding: .utf8)
    }

    @Test("docs/ARCHITECTURE.md lists every metric of CatenaMetric, with its type, labels and help, and no other")
    func docsTableMatchesCatalogue() throws {
        var documented: [String: [String]] = [:]
        let text = try Self.architecture()
        let start = try #require(text.range(of: "\n## Metrics\n"))
        let section = text[start.upperBound...]
        let end = section.range(of: "\n## ")?.lowerBound ?? section.endIndex
        for line in section[..<end].split(separator: "\n") where line.hasPrefix("| `catena_") {
            let cells = line.split(separator: "|", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
            documented[cells[1].trimmingCharacters(in: CharacterSet(charactersIn: "`"))] = Array(cells[2...5])
        }
        #expect(documented.count == CatenaMetric.allCases.count)
        for metric in CatenaMetric.allCases {
            let row = try #require(documented[metric.name], "\(metric.name) is not in docs/ARCHITECTURE.md")
            #expect(row[0] == metric.kind.rawValue, "\(metric.name)")
            #expect(row[1] == metric.labels.map { "`\($0)`" }.joined(separator: ", "), "\(metric.name)")
            #expect(row[2] == metric.entry.process.rawValue, "\(metric.name)")
            #expect(row[3] == metric.help, "\(metric.name)")
        }
    }

    @Test("names keep Prometheus' conventions: catena_ prefix, _total on counters only, base units, buckets for histograms")
    func namingConventions() {
        for metric in CatenaMetric.allCases {
            let name = metric.name
            #expect(name.hasPrefix("catena_"))
            #expect(name.hasSuffix("_total") == (metric.kind == .counter), "\(name)")
            for unit in ["_ms", "_milliseconds", "_us", "_microseconds", "_kb", "_kib", "_mb", "_mib"] {
                #expect(!name.contains(unit + "_") && !name.hasSuffix(unit), "\(name): use base units")
            }
            #expect((metric.kind == .histogram) == !metric.buckets.isEmpty, "\(name)")
            #expect(metric.buckets == metric.buckets.sorted(), "\(name)")
        }
    }
}
