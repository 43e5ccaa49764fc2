import os
import pytest

from configurator import ConfigError, configure


def defaults():
    return {'batch_size': 12, 'learning_rate': 6e-4, 'compile': False, 'device': '', 'note': None, 'betas': (0.9, 0.95)}


def test_overrides_and_config_file(tmp_path):
    cfg = tmp_path / 'c.py'
    cfg.write_text("import math\nbatch_size = 64\n_helper = 3\nlearning_rate = math.sqrt(1e-6)\n")
    ns = defaults()
    out = configure(ns, [str(cfg), '--compile=True', '--device=cuda:1', '--note=a=b'])
    assert ns['batch_size'] == 64 and ns['learning_rate'] == pytest.approx(1e-3)
    assert ns['compile'] is True and ns['device'] == 'cuda:1'
    assert ns['note'] == 'a=b'  # values may contain '='
    assert out['batch_size'] == 64 and '_helper' not in out


def test_int_accepted_for_float():
    ns = defaults()
    configure(ns, ['--learning_rate=1'])
    assert ns['learning_rate'] == 1.0 and isinstance(ns['learning_rate'], float)


def test_unknown_key_names_closest():
    with pytest.raises(ConfigError, match="unknown config key 'batchsize'.*batch_size"):
        configure(defaults(), ['--batchsize=3'])


def test_unknown_key_in_config_file(tmp_path):
    cfg = tmp_path / 'c.py'
    cfg.write_text("learning_rat = 1e-3\n")
    with pytest.raises(ConfigError, match="unknown key 'learning_rat'.*learning_rate"):
        configure(defaults(), [str(cfg)])


def test_type_mismatch_says_expected_and_got():
    with pytest.raises(ConfigError, match="expected int .*got str 'big'"):
        configure(defaults(), ['--batch_size=big'])
    with pytest.raises(ConfigError, match="expected int .*got float"):
        configure(defaults(), ['--batch_size=1.5'])
    with pytest.raises(ConfigError, match="expected bool"):
        configure(defaults(), ['--compile=1'])


def test_missing_config_file_and_malformed_override():
    with pytest.raises(ConfigError, match="cannot read config file"):
        configure(defaults(), ['config/nope.py'])
    with pytest.raises(ConfigError, match="--key=value"):
        configure(defaults(), ['--batch_size'])  # only a True/False key may stand alone


def test_bare_flag_switches_a_bool_on():
    ns = defaults()
    configure(ns, ['--compile'])
    assert ns['compile'] is True
    with pytest.raises(ConfigError, match="--key=value"):  # not a key this script has: no silent True
        configure(defaults(), ['--quick'])


def test_every_config_file_is_valid_for_train_py():
    """Each config in config/ runs through train.py's configurator: Python that parses, only keys train.py knows,
    values of the right type (a stray line in a header, or a renamed key, would only show when a user runs it).
    A 3-6 line header comes first."""
    import glob
    import importlib
    train = importlib.import_module('train')
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    paths = sorted(glob.glob(os.path.join(root, 'config', '*.py')))
    assert len(paths) >= 15
    for path in paths:
        namespace = {k: getattr(train, k) for k in train._config_keys}
        configure(namespace, [path], keys=train._config_keys)
        header = [line for line in open(path).read().splitlines()[:7] if line.startswith('#')]
        assert 3 <= len(header) <= 6, path
