import CatenaCore
import CatenaWire
import NIOCore
import Testing

@Suite("Request options in the frame header extension")
struct RequestOptionsTests {
    @Test("Every read mode round-trips, through a whole frame too")
    func readModesRoundTrip() throws {
        #expect(RequestOptions().encoded().isEmpty)
        #expect(try RequestOptions(decoding: []).readMode == nil)
        for mode in ReadMode.allCases {
            let options = RequestOptions(readMode: mode)
            #expect(options.encoded() == [1, 1, mode.rawValue])
            #expect(try RequestOptions(decoding: options.encoded()) == options)
            var buffer = ByteBuffer()
            Frame(type: .get, requestID: 7, headerExtension: options.encoded(), payload: ByteBuffer(bytes: [1, 2])).encode(into: &buffer)
            let frame = try #require(try FrameParser().next(&buffer))
            #expect(try frame.options.readMode == mode)
        }
    }

    @Test("Unknown tags are skipped; a field past the end or an unknown read mode is malformed")
    func unknownAndMalformed() throws {
        // A later option (tag 9, 3 bytes) before and after the read mode.
        #expect(try RequestOptions(decoding: [9, 3, 0, 0, 0, 1, 1, 2, 9, 0]).readMode == .any)
        for bad: [UInt8] in [[1], [1, 2, 0], [1, 1, 7], [1, 0], [9, 4, 0, 0, 0]] {
            #expect { try RequestOptions(decoding: bad) } throws: { ($0 as? CatenaError)?.code == .malformed }
        }
    }

    @Test("Read modes have command-line names")
    func names() {
        for mode in ReadMode.allCases { #expect(ReadMode(name: mode.description) == mode) }
        #expect(ReadMode(name: "eventual") == nil)
    }
}
