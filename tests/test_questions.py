"""CLEVR-style questions (clevr.py): the executor on hand-built scenes, then the generator, the balancer and
the caption parser on rendered ones."""
import collections
import json
import math
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import clevr  # noqa: E402
from clevr import execute, question_text  # noqa: E402


def obj(size, colour, material, shape, x, y):
    return dict(size=size, colour=colour, material=material, shape=shape, x=x, y=y)


# +x is to the camera's right, +y away from it. The sphere and the blue sphere are 0.2 apart along x: closer
# than the margin, so neither is left or right of the other.
CUBE = obj('large', 'red', 'metal', 'cube', -2.0, 0.0)
SPHERE = obj('small', 'red', 'rubber', 'sphere', 0.0, 1.5)
CYLINDER = obj('small', 'blue', 'rubber', 'cylinder', 2.0, -1.0)
BLUE_SPHERE = obj('large', 'blue', 'metal', 'sphere', 0.2, -2.0)
SCENE = [CUBE, SPHERE, CYLINDER, BLUE_SPHERE]


def S(relation=None, anchor=None, **filt):
    return {'filter': filt, 'relate': None if relation is None else {'relation': relation, 'anchor': anchor}}


def ask(family, scene=SCENE, **program):
    return execute({'family': family, **program}, scene)


def test_exist_count_compare_integer():
    assert ask('exist', set=S(colour='red')) == 'yes'
    assert ask('exist', set=S(colour='green')) == 'no'
    assert ask('exist', set=S(colour='red', shape='cylinder')) == 'no'  # filters combine with and, not or
    assert ask('count', set=S()) == '4'
    assert ask('count', set=S(colour='red')) == '2'
    assert ask('count', set=S(size='large', material='metal')) == '2'
    assert ask('count', set=S(colour='green')) == '0'
    assert ask('count', scene=[], set=S()) == '0'
    # a tie: equal counts are 'equal', and neither 'more' nor 'fewer' (catches >= for >)
    red, blue = S(colour='red'), S(colour='blue')
    assert ask('compare_integer', op='equal', sets=[red, blue]) == 'yes'
    assert ask('compare_integer', op='more', sets=[red, blue]) == 'no'
    assert ask('compare_integer', op='fewer', sets=[red, blue]) == 'no'
    metal, cylinders = S(material='metal'), S(shape='cylinder')  # 2 vs 1: the order of the sets matters
    assert ask('compare_integer', op='more', sets=[metal, cylinders]) == 'yes'
    assert ask('compare_integer', op='fewer', sets=[metal, cylinders]) == 'no'
    assert ask('compare_integer', op='fewer', sets=[cylinders, metal]) == 'yes'
    assert ask('compare_integer', op='equal', sets=[metal, cylinders]) == 'no'


def test_relations_margin_and_self():
    cube, cylinder, red_sphere = {'shape': 'cube'}, {'shape': 'cylinder'}, {'colour': 'red', 'shape': 'sphere'}
    assert ask('count', set=S('left', cylinder)) == '3'
    assert ask('count', set=S('right', cube)) == '3'
    assert ask('count', set=S('behind', cylinder)) == '2'  # the cube (y 0) and the sphere (y 1.5)
    assert ask('count', set=S('front', cylinder)) == '1'  # the blue sphere (y -2)
    assert ask('query_attribute', attribute='material', ref=S('front', cylinder)) == 'metal'
    # the blue sphere is 0.2 to the right of the red sphere: within the margin, so in neither relation
    assert ask('count', set=S('right', red_sphere)) == '1'  # the cylinder only
    assert ask('count', set=S('left', red_sphere)) == '1'  # the cube only
    assert ask('count', set=S('left', cube)) == '0'
    # an object is never related to itself, whatever the relation, even when the filter names it
    for relation in clevr.RELATIONS:
        assert ask('count', set=S(relation, cube, shape='cube')) == '0'
        for o in SCENE:
            assert not clevr.related(o, o, relation)
    b = obj('small', 'red', 'rubber', 'cube', 0.0, 0.0)
    m = clevr.RELATION_MARGIN
    assert clevr.related(obj('small', 'red', 'rubber', 'cube', -m - 0.01, 0.0), b, 'left')
    assert not clevr.related(obj('small', 'red', 'rubber', 'cube', -m + 0.01, 0.0), b, 'left')
    assert clevr.related(obj('small', 'red', 'rubber', 'cube', m + 0.01, 0.0), b, 'right')
    assert clevr.related(obj('small', 'red', 'rubber', 'cube', 0.0, -m - 0.01), b, 'front')
    assert clevr.related(obj('small', 'red', 'rubber', 'cube', 0.0, m + 0.01), b, 'behind')
    assert not clevr.related(obj('small', 'red', 'rubber', 'cube', 0.0, m + 0.01), b, 'front')
    # the axes are not mixed up: far along y says nothing about left or right
    assert not clevr.related(obj('small', 'red', 'rubber', 'cube', 0.0, 3.0), b, 'left')


def test_failed_references_give_none():
    assert ask('query_attribute', attribute='colour', ref=S(size='small', shape='cube')) is None  # no referent
    assert ask('query_attribute', attribute='shape', ref=S(colour='red')) is None  # two red things
    assert ask('count', set=S('left', {'colour': 'red'})) is None  # ambiguous anchor
    assert ask('exist', set=S('left', {'colour': 'green'})) is None  # missing anchor
    assert ask('compare_integer', op='more', sets=[S(), S('left', {'colour': 'red'})]) is None
    # a relation that leaves two candidates does not pick one
    assert ask('query_attribute', attribute='colour', ref=S('left', {'shape': 'cylinder'}, size='large')) is None
    cube = S(shape='cube')
    assert ask('compare_attribute', attribute='size', refs=[cube, S(colour='green')]) is None
    assert ask('compare_attribute', attribute='size', refs=[cube, S(size='large', material='metal')]) is None
    assert ask('compare_attribute', attribute='size', refs=[cube, cube]) is None  # one object, not two


def test_query_and_compare_attribute():
    assert ask('query_attribute', attribute='colour', ref=S(shape='cube')) == 'red'
    assert ask('query_attribute', attribute='shape', ref=S(size='small', colour='blue')) == 'cylinder'
    assert ask('query_attribute', attribute='size', ref=S(colour='red', shape='sphere')) == 'small'
    # "what shape is the red thing right of the cube": the cube itself is red but not right of itself
    assert ask('query_attribute', attribute='shape', ref=S('right', {'shape': 'cube'}, colour='red')) == 'sphere'
    cube, large_sphere = S(shape='cube'), S(size='large', shape='sphere')
    assert ask('compare_attribute', attribute='size', refs=[cube, large_sphere]) == 'yes'
    assert ask('compare_attribute', attribute='material', refs=[cube, large_sphere]) == 'yes'
    assert ask('compare_attribute', attribute='colour', refs=[cube, large_sphere]) == 'no'
    behind_cylinder = S('behind', {'shape': 'cylinder'}, shape='sphere')  # the small red rubber sphere
    assert ask('compare_attribute', attribute='material', refs=[S(shape='cylinder'), behind_cylinder]) == 'yes'
    assert ask('compare_attribute', attribute='colour', refs=[S(shape='cylinder'), behind_cylinder]) == 'no'


def test_question_text_templates():
    cube = {'shape': 'cube'}
    cases = [
        ({'family': 'exist', 'set': S(size='large', colour='red', shape='cube')}, "are there any large red cubes ?"),
        ({'family': 'exist', 'set': S('front', cube, material='metal')},
         "are there any metal things in front of the cube ?"),
        ({'family': 'count', 'set': S()}, "how many things are there ?"),
        ({'family': 'count', 'set': S('left', cube, colour='red')}, "how many red things are left of the cube ?"),
        ({'family': 'count', 'set': S('behind', {'size': 'small', 'colour': 'blue'}, shape='sphere')},
         "how many spheres are behind the small blue thing ?"),
        ({'family': 'compare_integer', 'op': 'more', 'sets': [S(shape='cylinder'), S(colour='red')]},
         "are there more cylinders than red things ?"),
        ({'family': 'compare_integer', 'op': 'fewer', 'sets': [S(shape='cylinder'), S(colour='red')]},
         "are there fewer cylinders than red things ?"),
        ({'family': 'compare_integer', 'op': 'equal', 'sets': [S(material='rubber', shape='sphere'), S(size='small')]},
         "are there an equal number of rubber spheres and small things ?"),
        ({'family': 'query_attribute', 'attribute': 'colour', 'ref': S(material='metal', size='large', shape='cube')},
         "what colour is the large metal cube ?"),  # adjectives in size, colour, material order
        ({'family': 'query_attribute', 'attribute': 'shape', 'ref': S('right', cube, colour='red')},
         "what shape is the red thing right of the cube ?"),
        ({'family': 'compare_attribute', 'attribute': 'size', 'refs': [S(shape='cube'), S('behind', cube, colour='blue')]},
         "is the cube the same size as the blue thing behind the cube ?"),
    ]
    for program, text in cases:
        assert question_text(program) == text
        assert clevr.decode_question(clevr.encode_question(text)) == text
    # the longest template: two relational refs, two adjectives and 'thing' on every noun, 'in front of'
    longest = S('front', {'size': 'large', 'material': 'metal'}, size='small', material='rubber')
    words = question_text({'family': 'compare_attribute', 'attribute': 'colour', 'refs': [longest, longest]}).split()
    assert len(words) == clevr.QUESTION_LEN <= 36


def test_vocab_and_encoding():
    vocab = clevr.vqa_vocab()
    assert vocab[:len(clevr.caption_vocab())] == clevr.caption_vocab()  # caption ids stay valid VQA ids
    assert vocab[len(clevr.caption_vocab())] == '<caption>'
    assert len(set(vocab)) == len(vocab)
    assert set(clevr.ANSWERS) <= set(vocab) and len(set(clevr.ANSWERS)) == len(clevr.ANSWERS)
    assert vocab == clevr.vqa_vocab()  # a fixed order
    ids = clevr.encode_question("how many red things are there ?")
    assert ids.dtype == np.int16 and ids.shape == (clevr.QUESTION_LEN,) and ids[7:].tolist() == [0] * (len(ids) - 7)
    with pytest.raises(ValueError, match=r"unknown word 'dogs'; the vocabulary is \[.*'cylinders'"):
        clevr.encode_question("how many dogs are there ?")
    with pytest.raises(ValueError, match='QUESTION_LEN'):
        clevr.encode_question(' '.join(['red'] * (clevr.QUESTION_LEN + 1)))


def raw_object(shape, pixels, x=0.0):
    return dict(shape=shape, colour='red', size='small', material='rubber', position=[x, 1.0, 0.3],
                visible_pixels=pixels, box=None if pixels == 0 else [0, 0, 3, 3])


def test_question_objects_occlusion():
    kept = clevr.question_objects([raw_object('cube', 300, x=-1.5), raw_object('sphere', 0), raw_object('cylinder', 12)])
    assert [o['shape'] for o in kept] == ['cube', 'cylinder']  # the hidden sphere is not there to ask about
    assert kept[0] == dict(size='small', colour='red', material='rubber', shape='cube', x=-1.5, y=1.0)
    assert clevr.question_objects([raw_object('cube', 300), raw_object('sphere', 5)]) is None  # barely visible


@pytest.fixture(scope='module')
def rendered():
    return clevr.render_scenes(60, seed=5, modalities=('rgb',))


def all_specs(program):
    """Every set or ref in a program, and whether it must pick exactly one object."""
    if program['family'] in ('exist', 'count'):
        return [(program['set'], False)]
    if program['family'] == 'compare_integer':
        return [(s, False) for s in program['sets']]
    if program['family'] == 'query_attribute':
        return [(program['ref'], True)]
    return [(r, True) for r in program['refs']]


def test_generated_questions_are_right_and_well_formed(rendered):
    seen_families, n_scenes = collections.Counter(), 0
    for i, raw in enumerate(rendered['objects']):
        objects = clevr.question_objects(raw)
        if objects is None:
            continue
        n_scenes += 1
        for q in clevr.generate_questions(objects, np.random.default_rng([5, i]), per_family=8):
            program = q['program']
            seen_families[q['family']] += 1
            assert q['family'] == program['family'] and q['group'].startswith(q['family'] + '/')
            assert q['answer'] == execute(program, objects) and q['answer'] in clevr.ANSWERS
            assert json.loads(json.dumps(program)) == program
            assert q['text'] == question_text(program) and q['text'].endswith(' ?')
            ids = clevr.encode_question(q['text'])
            assert len(q['text'].split()) <= clevr.QUESTION_LEN and clevr.decode_question(ids) == q['text']
            picked = []
            for spec, is_ref in all_specs(program):
                members = clevr.select(spec, objects)
                assert members is not None
                if is_ref:
                    assert len(members) == 1, q['text']  # every referring expression names exactly one object
                    picked.append(members[0])
                relate = spec['relate']
                if relate is not None:
                    assert len(spec['filter']) <= clevr.MAX_RELATE_ATTRIBUTES
                    assert len(relate['anchor']) <= clevr.MAX_RELATE_ATTRIBUTES
                    anchors = [o for o in objects if clevr.matches(o, relate['anchor'])]
                    assert len(anchors) == 1
                    # "red cubes left of the red cube" is always 0: the anchor is the only red cube
                    assert not relate['anchor'].items() <= spec['filter'].items(), q['text']
                    axis = clevr.RELATION_AXIS[relate['relation']]
                    assert all(o is anchors[0] or abs(o[axis] - anchors[0][axis]) >= clevr.RELATION_MARGIN
                               for o in objects), q['text']  # no borderline neighbour
                if 'attribute' in program:  # the question must not say the answer
                    assert program['attribute'] not in spec['filter']
                    assert relate is None or program['attribute'] not in relate['anchor']
            if program['family'] == 'compare_attribute':
                assert picked[0] is not picked[1]
            if program['family'] == 'compare_integer':
                assert program['sets'][0] != program['sets'][1]
                assert all(s['relate'] is None for s in program['sets'])
                # nested sets ("red things" and "red cubes") make 'fewer' or 'more' a sure answer
                first, second = (s['filter'].items() for s in program['sets'])
                assert not (first <= second or second <= first), q['text']
    assert n_scenes >= 50
    assert set(seen_families) == set(clevr.QUESTION_FAMILIES)


def test_generation_is_deterministic(rendered):
    objects = rendered['objects'][:20]
    a, b = clevr.make_questions(objects, 3, 4), clevr.make_questions(objects, 3, 4)
    assert a == b and len(a) > 0
    assert [q['scene'] for q in a] == sorted(q['scene'] for q in a)
    # scene i's questions do not depend on the scenes after it (before balancing)
    first = clevr.generate_questions(clevr.question_objects(objects[0]), np.random.default_rng([3, 7, 0]), 4)
    again = clevr.generate_questions(clevr.question_objects(objects[0]), np.random.default_rng([3, 7, 0]), 4)
    assert first == again


def test_balance():
    scenes = clevr.render_scenes(300, seed=11, modalities=('rgb',))['objects']
    candidates = []
    for i, raw in enumerate(scenes):
        objects = clevr.question_objects(raw)
        if objects is not None:
            for q in clevr.generate_questions(objects, np.random.default_rng([11, 7, i]), per_family=6):
                candidates.append({**q, 'scene': i})
    tolerance = 0.1
    kept = clevr.balance_questions(candidates, np.random.default_rng(0), tolerance)
    ids = [id(q) for q in kept]
    assert len(set(ids)) == len(ids) and set(ids) <= {id(q) for q in candidates}
    assert [q['scene'] for q in kept] == sorted(q['scene'] for q in kept)
    before = collections.defaultdict(collections.Counter)
    after = collections.defaultdict(collections.Counter)
    for q in candidates:
        before[q['group']][q['answer']] += 1
    for q in kept:
        after[q['group']][q['answer']] += 1
    for group, counts in before.items():
        # within a group no answer passes the cap set by its rarest common answer (bug caught: no cap, or the cap
        # taken from the most common answer)
        common = [a for a, n in counts.items() if n >= 0.05 * sum(counts.values())]
        cap = math.ceil((1 + tolerance) * min(counts[a] for a in common))
        assert max(after[group].values()) <= cap, (group, counts, after[group])
    for family in ('exist', 'compare_integer', 'compare_attribute'):
        answers = collections.Counter(q['answer'] for q in kept if q['family'] == family)
        assert set(answers) == {'yes', 'no'}
        assert max(answers.values()) / sum(answers.values()) < 0.62, (family, answers)
    # across the groups of a kind, the answers every group favours are capped too (bug caught: no second pass, which
    # leaves 0 and 1 at ~36% each of the counts)
    counts = collections.Counter(q['answer'] for q in kept if q['family'] == 'count')
    assert {'0', '1', '2', '3'} <= set(counts) and max(counts.values()) / sum(counts.values()) < 0.3, counts
    colours = collections.Counter(q['answer'] for q in kept if q['group'].startswith('query_attribute/colour'))
    assert len(colours) == len(clevr.COLOURS) and max(colours.values()) / sum(colours.values()) < 0.2, colours


def test_objects_from_caption(rendered):
    checked = 0
    for i, raw in enumerate(rendered['objects']):
        visible = sorted([o for o in raw if o['visible_pixels'] > 0], key=lambda o: o['box'][0] + o['box'][2])
        caption = clevr.make_caption(visible)
        assert caption == rendered['caption_text'][i]
        parsed = clevr.objects_from_caption(caption)
        attrs = [[o[k] for k in clevr.ATTRIBUTES] for o in parsed]
        assert attrs == [[o[k] for k in clevr.ATTRIBUTES] for o in visible]
        assert [o['x'] for o in parsed] == list(range(len(visible)))
        assert [o['y'] for o in parsed] == [clevr.POSITION_DEPTH.index(clevr.describe_object(o).split()[7]) for o in visible]
        objects = clevr.question_objects(raw)
        if objects is None:
            continue
        # a question without relations depends on the attributes alone, so the caption answers it as well
        for q in clevr.generate_questions(objects, np.random.default_rng([9, i]), per_family=4):
            if all(spec['relate'] is None for spec, _ in all_specs(q['program'])):
                assert execute(q['program'], parsed) == q['answer'], (caption, q['text'])
                checked += 1
    assert checked > 200
    assert clevr.objects_from_caption('.') == [] and clevr.objects_from_caption('') == []
    # a generated caption may be malformed: the phrases that parse still count, in their places
    parsed = clevr.objects_from_caption("a large red metal cube in the back left , a small blue banana , "
                                        "a small green rubber sphere in the front right . a large")
    assert [(o['shape'], o['x'], o['y']) for o in parsed] == [('cube', 0, 2), ('sphere', 2, 0)]
    # caption positions: phrase order is left to right, a shared depth region is neither front nor behind
    two = clevr.objects_from_caption("a large red metal cube in the back left , a small blue rubber sphere in the back right .")
    assert execute({'family': 'query_attribute', 'attribute': 'colour', 'ref': S('left', {'shape': 'sphere'})}, two) == 'red'
    assert execute({'family': 'count', 'set': S('behind', {'shape': 'sphere'})}, two) == '0'
