import CatenaCore
import Testing

@Suite("Log metadata keys")
struct LogKeyTests {
    @Test func everyKeyIsCatenaPrefixedSnakeCase() {
        for key in LogKey.allCases {
            let name = key.rawValue
            #expect(name.hasPrefix("catena_"), "\(key)")
            #expect(name.allSatisfy { ("a"..."z").contains($0) || ("0"..."9").contains($0) || $0 == "_" }, "\(key)")
            #expect(!name.hasSuffix("_") && !name.contains("__"), "\(key)")
        }
    }

    @Test func metadataIsKeyedByTheCasesRawValuesAndAKeyGivenTwiceKeepsItsLastValue() {
        let metadata: [String: String] = .catena([.epoch: "3", .error: "boom", .epoch: "4"])
        #expect(metadata == ["catena_epoch": "4", "catena_error": "boom"])
    }
}
