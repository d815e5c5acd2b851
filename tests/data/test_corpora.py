"""Datasets: each corpus layout is read as published, the validation split depends only on ids,
and every segment starts on a frame boundary paired with exactly the frames of its samples."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from wavedistill.data.audio import dequantize_16bit
from wavedistill.data.corpora import (
    SegmentDataset,
    Utterance,
    collate,
    read_folder,
    read_ljspeech,
    read_manifest,
    read_vctk,
    read_wav_scp,
    split_utterances,
)
from wavedistill.data.features import FeatureStats, log_mel
from wavedistill.errors import UserError

# -- manifest readers ------------------------------------------------------------------------


def test_folder_is_read_recursively_with_ids_from_relative_paths(tmp_path, make_wav):
    for rel in ("b.wav", "sub/a.flac", "sub/deeper/c.ogg"):
        make_wav(tmp_path / rel, seconds=0.05, subtype=None)
    (tmp_path / "notes.txt").write_text("not audio")
    utts = read_folder(tmp_path)
    assert [u.id for u in utts] == ["b", "sub/a", "sub/deeper/c"]
    assert utts[1].path == tmp_path / "sub/a.flac"
    assert {u.speaker for u in utts} == {"default"}


def test_folder_refuses_two_files_with_one_id(tmp_path, make_wav):
    make_wav(tmp_path / "x.wav", seconds=0.05)
    make_wav(tmp_path / "x.flac", seconds=0.05)
    with pytest.raises(UserError, match="both give utterance id 'x'"):
        read_folder(tmp_path)


def test_empty_folder_and_missing_folder_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no audio files found"):
        read_folder(tmp_path)
    with pytest.raises(UserError, match="no such folder"):
        read_folder(tmp_path / "missing")


def test_ljspeech_reads_metadata_and_wavs(tmp_path, make_wav):
    root = tmp_path / "LJSpeech-1.1"
    lines = [
        "LJ001-0001|Printing, in the only sense|Printing, in the only sense",
        'LJ001-0002|"in being comparatively modern."|"in being comparatively modern."',
    ]
    (root / "wavs").mkdir(parents=True)
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    for uid in ("LJ001-0001", "LJ001-0002"):
        make_wav(root / "wavs" / f"{uid}.wav", seconds=0.05, sr=22050)
    utts = read_ljspeech(root)
    assert utts == [
        Utterance("LJ001-0001", root / "wavs/LJ001-0001.wav", "LJ"),
        Utterance("LJ001-0002", root / "wavs/LJ001-0002.wav", "LJ"),
    ]


def test_ljspeech_without_metadata_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no metadata.csv"):
        read_ljspeech(tmp_path)


def _vctk(root: Path, make_wav, folder="wav48_silence_trimmed", mics=True):
    for speaker in ("p226", "p225"):
        for n in (1, 2):
            if mics:
                for mic in ("mic1", "mic2"):
                    make_wav(root / folder / speaker / f"{speaker}_00{n}_{mic}.flac", 0.05)
            else:
                make_wav(root / folder / speaker / f"{speaker}_00{n}.wav", 0.05)
    (root / "speaker-info.txt").write_text("ID AGE GENDER ACCENTS\n")


def test_vctk_092_keeps_one_microphone_and_names_speakers_by_folder(tmp_path, make_wav):
    _vctk(tmp_path, make_wav)
    utts = read_vctk(tmp_path)
    assert [u.id for u in utts] == [
        "p225_001_mic1",
        "p225_002_mic1",
        "p226_001_mic1",
        "p226_002_mic1",
    ]
    assert [u.speaker for u in utts] == ["p225", "p225", "p226", "p226"]
    assert [u.id for u in read_vctk(tmp_path, mic="mic2")][0] == "p225_001_mic2"


def test_vctk_080_wav48_layout_and_direct_audio_folder(tmp_path, make_wav):
    _vctk(tmp_path, make_wav, folder="wav48", mics=False)
    assert [u.id for u in read_vctk(tmp_path)][:2] == ["p225_001", "p225_002"]
    assert read_vctk(tmp_path / "wav48") == read_vctk(tmp_path)


def test_vctk_with_two_audio_folders_asks_for_one(tmp_path, make_wav):
    _vctk(tmp_path, make_wav, folder="wav48", mics=False)
    _vctk(tmp_path, make_wav, folder="wav48_silence_trimmed")
    with pytest.raises(UserError, match="several VCTK audio folders"):
        read_vctk(tmp_path)


def test_wav_scp_reads_paths_relative_to_its_folder_and_speakers_from_utt2spk(tmp_path, make_wav):
    data = tmp_path / "data" / "train"
    make_wav(data / "audio" / "u1.wav", 0.05)
    absolute = make_wav(tmp_path / "elsewhere" / "u2.wav", 0.05)
    (data / "wav.scp").write_text(f"spkA-u1 audio/u1.wav\nspkB-u2 {absolute}\n\n")
    (data / "utt2spk").write_text("spkA-u1 spkA\nspkB-u2 spkB\n")
    utts = read_wav_scp(data)
    assert utts == [
        Utterance("spkA-u1", data / "audio/u1.wav", "spkA"),
        Utterance("spkB-u2", absolute, "spkB"),
    ]
    assert read_wav_scp(data / "wav.scp") == utts


def test_wav_scp_refuses_piped_commands_naming_the_line(tmp_path):
    (tmp_path / "wav.scp").write_text("u1 /a.wav\nu2 sph2pipe -f wav /b.sph |\n")
    with pytest.raises(UserError) as info:
        read_wav_scp(tmp_path / "wav.scp")
    assert f"{tmp_path / 'wav.scp'}:2" in str(info.value) and "piped command" in str(info.value)


def test_wav_scp_malformed_line_is_a_user_error(tmp_path):
    (tmp_path / "wav.scp").write_text("lonely-id\n")
    with pytest.raises(UserError, match=r"wav.scp:1: expected '<id> <value>'"):
        read_wav_scp(tmp_path)


def test_manifest_refuses_ids_that_escape_the_dataset_folder(tmp_path):
    (tmp_path / "wav.scp").write_text("../../evil /a.wav\n")
    with pytest.raises(UserError, match="not a safe relative name"):
        read_manifest("wavscp", tmp_path)


def test_unknown_format_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="data.format"):
        read_manifest("timit", tmp_path)


# -- split -----------------------------------------------------------------------------------


def _utts(n, start=0):
    return [Utterance(f"utt{i:04d}", Path(f"{i}.wav")) for i in range(start, start + n)]


def test_split_is_deterministic_and_depends_on_the_seed():
    a = split_utterances(_utts(400), 0.1, 1, seed=7)
    assert a == split_utterances(_utts(400), 0.1, 1, seed=7)
    assert a[1] != split_utterances(_utts(400), 0.1, 1, seed=8)[1]
    assert 20 <= len(a[1]) <= 60  # ~ 40 held out


def test_split_keeps_every_decision_when_files_are_added():
    train, valid = split_utterances(_utts(300), 0.1, 1, seed=0)
    train2, valid2 = split_utterances(_utts(300) + _utts(200, start=300), 0.1, 1, seed=0)
    assert set(valid) <= set(valid2) and set(train) <= set(train2)


def test_split_holds_out_at_least_valid_min_and_keeps_one_for_training():
    train, valid = split_utterances(_utts(5), 0.0, 2, seed=0)
    assert len(valid) == 2 and len(train) == 3
    train, valid = split_utterances(_utts(1), 0.99, 1, seed=0)
    assert len(train) == 1 and valid == []


def test_split_preserves_input_order():
    train, valid = split_utterances(_utts(50), 0.3, 1, seed=3)
    assert train == sorted(train, key=lambda u: u.id) and valid == sorted(valid, key=lambda u: u.id)


# -- SegmentDataset --------------------------------------------------------------------------


def _entries(folder):
    return {e["id"]: e for e in map(json.loads, (folder / "train.jsonl").read_text().splitlines())}


def test_segments_start_on_frame_boundaries_with_exactly_their_frames(tiny_dataset, tiny_config):
    hop, segment = tiny_config.audio.hop_length, tiny_config.data.segment_length
    dataset = SegmentDataset(tiny_dataset, "train", tiny_config)
    entries = _entries(tiny_dataset)
    for index in range(len(dataset)):
        item = dataset[index]
        entry = entries[item["id"]]
        first = dataset.start_frame(index)
        assert item["audio"].shape == (segment,) and item["mel"].shape == (20, segment // hop)
        pcm = np.load(tiny_dataset / entry["audio"])
        whole = torch.from_numpy(dequantize_16bit(pcm))
        # the samples are the utterance's samples from the frame boundary first * hop ...
        torch.testing.assert_close(item["audio"], whole[first * hop : first * hop + segment])
        # ... and the mel is the one computed from those very samples
        expected = log_mel(whole, tiny_config.audio)[:, first : first + segment // hop]
        torch.testing.assert_close(item["mel"], expected, atol=1e-5, rtol=1e-5)


def test_set_epoch_changes_segments_and_the_same_epoch_repeats_them(tiny_dataset, tiny_config):
    dataset = SegmentDataset(tiny_dataset, "train", tiny_config, seed=5)
    starts = {e: [None] * len(dataset) for e in (0, 1)}
    for epoch in (0, 1):
        dataset.set_epoch(epoch)
        starts[epoch] = [dataset.start_frame(i) for i in range(len(dataset))]
    assert starts[0] != starts[1]
    resumed = SegmentDataset(tiny_dataset, "train", tiny_config, seed=5)
    resumed.set_epoch(1)
    assert [resumed.start_frame(i) for i in reversed(range(len(resumed)))] == starts[1][::-1]
    torch.testing.assert_close(resumed[2]["audio"], dataset[2]["audio"])


def test_full_utterance_mode_returns_whole_utterances(tiny_dataset, tiny_config):
    dataset = SegmentDataset(tiny_dataset, "train", tiny_config, full_utterances=True)
    entries = _entries(tiny_dataset)
    for item in (dataset[i] for i in range(len(dataset))):
        entry = entries[item["id"]]
        assert item["audio"].shape == (entry["samples"],)
        assert item["mel"].shape == (20, entry["frames"])


def test_stats_normalise_the_mel(tiny_dataset, tiny_config):
    stats = FeatureStats.load(tiny_dataset / "stats.npz")
    raw = SegmentDataset(tiny_dataset, "train", tiny_config)[0]["mel"]
    normalised = SegmentDataset(tiny_dataset, "train", tiny_config, stats)[0]["mel"]
    torch.testing.assert_close(normalised, stats.normalize(raw))


def test_utterances_shorter_than_a_segment_are_skipped(tiny_dataset, tiny_config, caplog):
    tiny_config.data.segment_length = 64 * 80  # 5120 samples: only the longer clips qualify
    dataset = SegmentDataset(tiny_dataset, "train", tiny_config)
    assert 0 < len(dataset) < len(_entries(tiny_dataset))
    assert "shorter than data.segment_length" in caplog.text


def test_missing_split_is_a_user_error(tmp_path, tiny_config):
    with pytest.raises(UserError, match="train.jsonl"):
        SegmentDataset(tmp_path, "train", tiny_config)


def test_collate_batches_and_pads_whole_utterances(tiny_dataset, tiny_config):
    dataset = SegmentDataset(tiny_dataset, "train", tiny_config, full_utterances=True)
    items = [dataset[0], dataset[len(dataset) - 1]]
    batch = collate(items)
    longest = max(it["audio"].shape[0] for it in items)
    assert batch["audio"].shape == (2, longest) and batch["audio"].dtype == torch.float32
    assert batch["mel"].shape == (2, 20, longest // 64)
    assert batch["speaker"].dtype == torch.int64 and batch["speaker"].tolist() == [0, 0]
    assert batch["lengths"].tolist() == [it["audio"].shape[0] for it in items]
    assert batch["id"] == [it["id"] for it in items]
    short = int(batch["lengths"].argmin())
    assert torch.all(batch["audio"][short, batch["lengths"][short] :] == 0)


def test_null_segment_length_trains_on_whole_utterances(tiny_corpus, tiny_config, tmp_path):
    from wavedistill.data.preprocess import preprocess

    tiny_config.data.segment_length = None
    preprocess(tiny_config, tiny_corpus, tmp_path / "out")
    dataset = SegmentDataset(tmp_path / "out", "train", tiny_config)
    entries = _entries(tmp_path / "out")
    assert [dataset[i]["audio"].shape[0] for i in range(len(dataset))] == [
        entries[e["id"]]["samples"] for e in dataset.entries
    ]


def test_nested_folder_ids_become_nested_dataset_files(tmp_path, make_wav, tiny_config):
    from wavedistill.data.preprocess import preprocess

    for name in ("a/x.wav", "b/x.wav"):
        make_wav(tmp_path / "corpus" / name, 0.3)
    preprocess(tiny_config, tmp_path / "corpus", tmp_path / "out")
    assert (tmp_path / "out" / "audio" / "a" / "x.npy").exists()
    assert (tmp_path / "out" / "mel" / "b" / "x.npy").exists()
