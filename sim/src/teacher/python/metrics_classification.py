

def accuracy(truth, predicted):
    return float(np.mean(truth == predicted))


def f1_macro(truth, predicted):
    """The unweighted mean of every class's F1 score, over the classes of both arrays; a class
    never predicted and never true does not occur, one with no true positives scores 0."""
    scores = []
    for label in np.union1d(truth, predicted):
        true_positives = np.sum((predicted == label) & (truth == label))
        wrong = np.sum((predicted == label) != (truth == label))
        scores.append(2 * true_positives / (2 * true_positives + wrong) if true_positives else 0.0)
    return float(np.mean(scores))
